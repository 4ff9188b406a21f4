"""Wide Residual Networks (Zagoruyko & Komodakis 2016, arXiv 1605.07146).

WRN-d-k: a 16-channel 3x3 stem, then 3 stages of n = (d-4)/6 pre-activation "wide basic" blocks with 16k, 32k and
64k channels, dropout between the two 3x3 convs of each block, and a 1x1 projection shortcut where the shape changes
(it reads the pre-activated input, as in the authors' code). The network ends with BN-ReLU, global pooling, linear.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    DropPath,
    check_positive_int,
    check_probability,
    conv1x1,
    conv3x3,
    drop_path_rates,
    init_weights,
)


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.drop_path = DropPath(drop_path)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = conv1x1(in_channels, out_channels, stride) if needs_projection else None

    def zero_init_last(self) -> None:
        # Pre-activation branches end in a conv; zeroing it starts the block as the identity.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))  # not in-place: x is the identity path when there is no projection
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        return self.drop_path(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen_factor.

    Args:
        depth: total conv+linear layers, 6n+4 (16, 22, 28, 40, ...).
        widen_factor: k, the width multiplier of the three stages (16k, 32k, 64k channels).
        dropout: dropout probability between the convs of each block (the paper uses 0.3 for WRN-28-10).
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth!r}"
            )
        check_positive_int("widen_factor", widen_factor)
        check_probability("dropout", dropout)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.stem = conv3x3(in_channels, 16)
        rates = iter(drop_path_rates(drop_path, 3 * n))
        channels = 16
        stages = []
        for stage_index, width in enumerate(widths):
            blocks = []
            for block_index in range(n):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(WideBasicBlock(channels, width, stride, dropout, next(rates)))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.final_act = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
