"""ResNets for 32x32 inputs (He et al. 2015, arXiv 1512.03385).

Two layouts share one generic class:

- ``resnet(depth)`` -- the ImageNet ResNet-18/34/50/101/152 stages (64..512 wide, 4 stages) on a CIFAR stem: a 3x3
  stride-1 conv and no max-pool, so the last stage works at 4x4 (the layout of the Cutout paper's ResNet-18).
- ``cifar_resnet(depth)`` -- the paper's own CIFAR networks: 6n+2 layers, 3 stages of 16/32/64 channels, and the
  parameter-free zero-padded identity shortcut ("option A") that gives the paper's 0.27M for ResNet-20.

Bottleneck blocks put the stride on the 3x3 conv (torchvision's "v1.5"); the parameter count is the same as the
paper's stride-on-1x1 form.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    IMAGENET_WIDTHS,
    ClassifierHead,
    DropPath,
    StagedNet,
    ZeroPadShortcut,
    blocks_for_depth,
    check_choice,
    check_int_sequence,
    check_positive_int,
    conv1x1,
    conv3x3,
    conv_bn_act,
    imagenet_layout,
    init_weights,
    make_stages,
    projection_shortcut,
)


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if kind == "zero_pad":
        return ZeroPadShortcut(in_channels, out_channels, stride, pool="subsample")
    return projection_shortcut(in_channels, out_channels, stride)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, shortcut: str = "projection",
                 drop_path: float = 0.0):
        super().__init__()
        self.out_channels = out_channels = width * self.expansion
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(self.drop_path(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (strided) - 1x1 expand to 4x width, each followed by BN, ReLU after the addition.

    With `groups` > 1 and a free `out_channels` it is ResNeXt's block (Xie et al. 2017, Fig. 3c).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, shortcut: str = "projection",
                 drop_path: float = 0.0, *, groups: int = 1, out_channels: int | None = None):
        super().__init__()
        if out_channels is None:
            out_channels = width * self.expansion
        self.out_channels = out_channels
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups=groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(self.drop_path(out) + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(StagedNet):
    """Generic post-activation ResNet on a CIFAR stem.

    Args:
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18 or (3, 3, 3) for ResNet-20.
        block: "basic" or "bottleneck".
        widths: inner width of each stage (a bottleneck's output is 4x this); one entry per stage.
        stem_width: output channels of the 3x3 stem conv.
        shortcut: "projection" (1x1 conv + BN where the shape changes) or "zero_pad" (parameter-free).
        drop_path: stochastic-depth rate of the last block; earlier blocks get linearly less.
        zero_init_residual: start every residual branch at zero (last BN weight = 0).
    """

    def __init__(
        self,
        layers=(2, 2, 2, 2),
        *,
        block: str = "basic",
        widths=IMAGENET_WIDTHS,
        stem_width: int = 64,
        shortcut: str = "projection",
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        check_choice("block", block, BLOCKS)
        check_choice("shortcut", shortcut, ("projection", "zero_pad"))
        layers = check_int_sequence("layers", layers)
        widths = check_int_sequence("widths", widths, length=len(layers))
        check_positive_int("stem_width", stem_width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)

        self.stem = conv_bn_act(in_channels, stem_width)
        self.stages, channels = make_stages(
            functools.partial(BLOCKS[block], shortcut=shortcut), layers, widths, stem_width, drop_path=drop_path
        )
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self, zero_init_residual)


def resnet(depth: int = 18, **kwargs) -> ResNet:
    """ImageNet-layout ResNet (4 stages, 64..512) on a CIFAR stem; depth is one of 18, 34, 50, 101, 152."""
    block, layers = imagenet_layout(
        depth,
        "resnet depth must be one of {valid} (the 4-stage ImageNet layout), got {depth!r}; "
        "for He et al.'s 3-stage CIFAR ResNets (20, 32, 44, 56, 110, ...: 6n+2) use cifar_resnet",
    )
    return ResNet(layers, block=block, widths=IMAGENET_WIDTHS, stem_width=64, **kwargs)


def cifar_resnet(depth: int = 20, *, shortcut: str = "zero_pad", **kwargs) -> ResNet:
    """He et al.'s CIFAR ResNet: depth = 6n+2, 3 stages of n basic blocks at 16/32/64 channels."""
    n = blocks_for_depth(depth, 6, 2)
    if n is None:
        raise ConfigError(
            f"cifar_resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    return ResNet((n, n, n), block="basic", widths=(16, 32, 64), stem_width=16, shortcut=shortcut, **kwargs)
