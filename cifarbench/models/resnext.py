"""ResNeXt-29 for CIFAR (Xie et al. 2017, "Aggregated Residual Transformations", arXiv 1611.05431).

A 64-channel 3x3 stem, then 3 stages of 3 bottleneck blocks (3 convs each: 9 x 3 + stem + classifier = 29 layers).
Each block is 1x1 reduce -> grouped 3x3 with `cardinality` groups -> 1x1 expand, every conv followed by BN, ReLU after
the addition, 1x1 projection shortcuts where the shape changes. In Xie's "C x d" notation, C is the cardinality and d
the channels per group in the first stage; the grouped width C*d doubles at each stage.

The generic form takes the first stage's grouped width ``width`` = C*d, as the seed notebook's
``ResNeXtCIFAR(cardinality, width)`` did:

- ResNeXt-29 8x64d of the paper: ``ResNeXt(cardinality=8, width=512)``, grouped widths 512/1024/2048, stage outputs
  256/512/1024, 34.4M parameters; 16x64d is ``ResNeXt(cardinality=16, width=1024)``, 68.1M.
- The seed notebook's ``ResNeXtCIFAR(cardinality=8, width=64)`` has grouped widths 64/128/256 and outputs 64/128/256,
  i.e. 8 groups of 8 channels: ``ResNeXt(cardinality=8, width=64, out_channels=(64, 128, 256))``. That is 8x8d in
  Xie's notation, not 8x64d: 0.82M parameters against 34.4M. Its config is ``resnext29_8x8d_small``.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    DropPath,
    check_int_sequence,
    check_positive_int,
    conv1x1,
    conv3x3,
    drop_path_rates,
    init_weights,
    projection_shortcut,
)


class ResNeXtBlock(nn.Module):
    """conv1x1-BN-ReLU, grouped conv3x3(strided)-BN-ReLU, conv1x1-BN; added to the shortcut, then ReLU."""

    def __init__(self, in_channels: int, group_width: int, out_channels: int, cardinality: int, stride: int = 1,
                 drop_path: float = 0.0):
        super().__init__()
        self.conv1 = conv1x1(in_channels, group_width)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.conv2 = conv3x3(group_width, group_width, stride, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.conv3 = conv1x1(group_width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = projection_shortcut(in_channels, out_channels, stride) if needs_projection else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(self.drop_path(out) + self.shortcut(x))


class ResNeXt(nn.Module):
    """Generic CIFAR ResNeXt.

    Args:
        depth: 9n+2 (n blocks per stage; 29 for n=3).
        cardinality: C, the number of groups of the 3x3 convs.
        width: channels of the first stage's grouped 3x3 conv, C*d (doubles each stage); a multiple of cardinality.
        out_channels: output channels of the three stages (256/512/1024 in the paper).
        stem_width: channels of the 3x3 stem conv (64).
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero (its last BN weight = 0).
    """

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 8,
        width: int = 512,
        *,
        out_channels=(256, 512, 1024),
        stem_width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
            raise ConfigError(f"ResNeXt depth must be 9n+2 with n >= 1 (11, 20, 29, 38, ...), got {depth!r}")
        check_positive_int("cardinality", cardinality)
        check_positive_int("width", width)
        if width % cardinality:
            raise ConfigError(
                f"ResNeXt width must be a multiple of cardinality (width = cardinality x channels per group), "
                f"got width={width} and cardinality={cardinality}"
            )
        out_channels = check_int_sequence("out_channels", out_channels, length=3)
        check_positive_int("stem_width", stem_width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        n = (depth - 2) // 9
        group_widths = [width * 2**stage for stage in range(3)]

        self.stem = nn.Sequential(conv3x3(in_channels, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        rates = iter(drop_path_rates(drop_path, 3 * n))
        channels = stem_width
        stages = []
        for stage_index, (group_width, out) in enumerate(zip(group_widths, out_channels)):
            blocks = []
            for block_index in range(n):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(ResNeXtBlock(channels, group_width, out, cardinality, stride, next(rates)))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
