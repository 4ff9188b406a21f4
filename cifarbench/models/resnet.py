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

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    DropPath,
    ZeroPadShortcut,
    check_choice,
    check_int_sequence,
    check_positive_int,
    conv1x1,
    conv3x3,
    drop_path_rates,
    init_weights,
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
        out_channels = width * self.expansion
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
    """1x1 reduce - 3x3 (strided) - 1x1 expand to 4x width, each followed by BN, ReLU after the addition."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, shortcut: str = "projection",
                 drop_path: float = 0.0):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
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


class ResNet(nn.Module):
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
        widths=(64, 128, 256, 512),
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
        block_cls = BLOCKS[block]

        self.stem = nn.Sequential(conv3x3(in_channels, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        rates = iter(drop_path_rates(drop_path, sum(layers)))
        channels = stem_width
        stages = []
        for stage_index, (num_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(block_cls(channels, width, stride, shortcut, next(rates)))
                channels = width * block_cls.expansion
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


# depth -> (block, blocks per stage) of He et al.'s ImageNet table.
IMAGENET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def resnet(depth: int = 18, **kwargs) -> ResNet:
    """ImageNet-layout ResNet (4 stages, 64..512) on a CIFAR stem; depth is one of 18, 34, 50, 101, 152."""
    if depth not in IMAGENET_LAYOUTS:
        valid = ", ".join(str(d) for d in IMAGENET_LAYOUTS)
        raise ConfigError(
            f"resnet depth must be one of {valid} (the 4-stage ImageNet layout), got {depth!r}; "
            "for He et al.'s 3-stage CIFAR ResNets (20, 32, 44, 56, 110, ...: 6n+2) use cifar_resnet"
        )
    block, layers = IMAGENET_LAYOUTS[depth]
    return ResNet(layers, block=block, widths=(64, 128, 256, 512), stem_width=64, **kwargs)


def cifar_resnet(depth: int = 20, *, shortcut: str = "zero_pad", **kwargs) -> ResNet:
    """He et al.'s CIFAR ResNet: depth = 6n+2, 3 stages of n basic blocks at 16/32/64 channels."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"cifar_resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    n = (depth - 2) // 6
    return ResNet((n, n, n), block="basic", widths=(16, 32, 64), stem_width=16, shortcut=shortcut, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return resnet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return resnet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    return resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    return resnet(101, **kwargs)


def resnet20(**kwargs) -> ResNet:
    return cifar_resnet(20, **kwargs)


def resnet32(**kwargs) -> ResNet:
    return cifar_resnet(32, **kwargs)


def resnet44(**kwargs) -> ResNet:
    return cifar_resnet(44, **kwargs)


def resnet56(**kwargs) -> ResNet:
    return cifar_resnet(56, **kwargs)


def resnet110(**kwargs) -> ResNet:
    return cifar_resnet(110, **kwargs)
