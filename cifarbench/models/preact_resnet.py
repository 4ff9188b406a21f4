"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks", arXiv 1603.05027).

BN and ReLU come before each conv, so the identity path carries the sum untouched from block to block. Where a block
changes shape, the projection shortcut reads the pre-activated input (the paper's choice for those blocks), and the
head starts with a BN-ReLU before pooling because the last block's output is not normalised.

- ``preact_resnet(depth)``: the 4-stage 64..512 ImageNet layout on a CIFAR stem (PreAct-ResNet-18/34/50/101/152).
- ``cifar_preact_resnet(depth)``: the paper's CIFAR bottleneck networks, depth 9n+2 on the 16/64/128/256 layout
  (PreAct-ResNet-164: n=18, PreAct-ResNet-1001: n=111).
"""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    IMAGENET_WIDTHS,
    ClassifierHead,
    DropPath,
    StagedNet,
    blocks_for_depth,
    check_choice,
    check_int_sequence,
    check_positive_int,
    conv1x1,
    conv3x3,
    dropout_layer,
    imagenet_layout,
    init_weights,
    make_stages,
)


def preact_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d | None:
    # None rather than nn.Identity: the identity path carries x itself, while a projection reads the pre-activated x.
    return conv1x1(in_channels, out_channels, stride) if stride != 1 or in_channels != out_channels else None


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus the shortcut; no activation after the addition.

    With dropout it is Zagoruyko & Komodakis's wide basic block.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.out_channels = out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_channels)
        self.act = nn.ReLU(inplace=True)
        self.dropout = dropout_layer(dropout)
        self.drop_path = DropPath(drop_path)
        self.shortcut = preact_shortcut(in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        # The branch ends in a conv, not a BN: zeroing it makes the block start as the identity all the same.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in-place: x itself is the identity path when there is no projection.
        pre = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        return self.drop_path(out) + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 to 4x width, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.out_channels = out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = preact_shortcut(in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act(self.bn2(out)))
        out = self.conv3(self.act(self.bn3(out)))
        return self.drop_path(out) + shortcut


BLOCKS = {"basic": PreActBasicBlock, "bottleneck": PreActBottleneck}


class PreActResNet(StagedNet):
    """Generic pre-activation ResNet on a CIFAR stem (3x3 stride-1 conv, no BN/ReLU: the first block does that).

    Args:
        layers: blocks per stage.
        block: "basic" or "bottleneck".
        widths: inner width of each stage (a bottleneck's output is 4x this).
        stem_width: output channels of the stem conv.
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero (its last conv, which ends a pre-act branch).
    """

    def __init__(
        self,
        layers=(2, 2, 2, 2),
        *,
        block: str = "basic",
        widths=IMAGENET_WIDTHS,
        stem_width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        check_choice("block", block, BLOCKS)
        layers = check_int_sequence("layers", layers)
        widths = check_int_sequence("widths", widths, length=len(layers))
        check_positive_int("stem_width", stem_width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)

        self.stem = conv3x3(in_channels, stem_width)
        self.stages, channels = make_stages(BLOCKS[block], layers, widths, stem_width, drop_path=drop_path)
        self.head = ClassifierHead(channels, num_classes, pre_act=True)
        init_weights(self, zero_init_residual)


def preact_resnet(depth: int = 18, **kwargs) -> PreActResNet:
    """Pre-activation ResNet on the 4-stage 64..512 layout; depth is one of 18, 34, 50, 101, 152."""
    block, layers = imagenet_layout(
        depth,
        "preact_resnet depth must be one of {valid} (the 4-stage 64..512 layout), got {depth!r}; "
        "for the 3-stage CIFAR bottleneck networks (164, 1001, ...: 9n+2) use cifar_preact_resnet",
    )
    return PreActResNet(layers, block=block, widths=IMAGENET_WIDTHS, stem_width=64, **kwargs)


def cifar_preact_resnet(depth: int = 164, **kwargs) -> PreActResNet:
    """He et al. 2016's CIFAR bottleneck network: depth = 9n+2, 16-channel stem, stage outputs 64/128/256."""
    n = blocks_for_depth(depth, 9, 2)
    if n is None:
        raise ConfigError(
            f"cifar_preact_resnet depth must be 9n+2 with n >= 1 (11, 20, ..., 164, 1001), got {depth!r}"
        )
    return PreActResNet((n, n, n), block="bottleneck", widths=(16, 32, 64), stem_width=16, **kwargs)
