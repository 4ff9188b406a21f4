"""PyramidNet (Han, Kim & Kim 2017, "Deep Pyramidal Residual Networks", arXiv 1610.02915), with optional ShakeDrop
(Yamada et al. 2019, arXiv 1802.02375).

Instead of doubling the width at each downsampling, every block adds alpha/N channels (N = number of blocks), so the
width rises linearly from 16 to 16 + alpha (x4 for bottleneck outputs). The shortcut is the identity with zero channels
appended and a 2x2 average pool where the block has stride 2, so the network has no projection parameters at all.
The paper's BN placement: a block starts with BN and no ReLU (the identity path stays unrectified), has a single ReLU
per inner conv, and ends with a BN before the addition.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    ClassifierHead,
    DropPath,
    StagedNet,
    ZeroPadShortcut,
    blocks_for_depth,
    check_choice,
    check_positive_int,
    check_probability,
    conv1x1,
    conv3x3,
    conv_bn_act,
    init_weights,
    make_stages,
)


class ShakeDrop(nn.Module):
    """Scale the residual branch by b + alpha - b*alpha forward and b + beta - b*beta backward (Yamada et al.).

    b ~ Bernoulli(1 - p) per sample: with b = 1 the branch passes unchanged; with b = 0 it is multiplied by a random
    alpha ~ U[-1, 1] forward and its gradient by an independent beta ~ U[0, 1]. In eval mode the branch is scaled by
    E[b + alpha - b*alpha] = 1 - p.
    """

    def __init__(self, p: float = 0.0, alpha_range=(-1.0, 1.0)):
        super().__init__()
        check_probability("shakedrop", p)
        self.p = float(p)
        self.alpha_range = tuple(float(a) for a in alpha_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if not self.training:
            return x * (1.0 - self.p)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = x.new_empty(shape).bernoulli_(1.0 - self.p).bool()
        low, high = self.alpha_range
        # b + alpha - b*alpha is 1 where b = 1 and alpha where b = 0; masked_fill makes the kept 1 exact.
        forward_scale = x.new_empty(shape).uniform_(low, high).masked_fill_(keep, 1.0)
        backward_scale = x.new_empty(shape).uniform_(0.0, 1.0).masked_fill_(keep, 1.0)
        # Value x*forward_scale, gradient x*backward_scale: the detached difference carries the value but no gradient.
        # Plain tensor ops rather than an autograd.Function, so torch.compile traces it without a graph break.
        backward_path = x * backward_scale
        return backward_path + (x * forward_scale - backward_path).detach()

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class PyramidBasicBlock(nn.Module):
    """BN-conv3x3-BN-ReLU-conv3x3-BN (no ReLU after the addition)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, drop_path: float = 0.0,
                 shakedrop: float = 0.0):
        super().__init__()
        self.out_channels = out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shake = ShakeDrop(shakedrop)
        self.drop_path = DropPath(drop_path)
        self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride, pool="avg")

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.act(self.bn2(out)))
        out = self.shake(self.bn3(out))
        return self.drop_path(out) + self.shortcut(x)


class PyramidBottleneck(nn.Module):
    """BN-conv1x1-BN-ReLU-conv3x3(strided)-BN-ReLU-conv1x1(4x)-BN (no ReLU after the addition)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, drop_path: float = 0.0,
                 shakedrop: float = 0.0):
        super().__init__()
        self.out_channels = out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn4 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shake = ShakeDrop(shakedrop)
        self.drop_path = DropPath(drop_path)
        self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride, pool="avg")

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn4.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.act(self.bn2(out)))
        out = self.conv3(self.act(self.bn3(out)))
        out = self.shake(self.bn4(out))
        return self.drop_path(out) + self.shortcut(x)


BLOCKS = {"basic": PyramidBasicBlock, "bottleneck": PyramidBottleneck}
# Layers per block, to turn depth into blocks: depth = LAYERS_PER_BLOCK * 3N + 2.
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


class PyramidNet(StagedNet):
    """Generic PyramidNet.

    Args:
        depth: 6N+2 for basic blocks (110: N=18), 9N+2 for bottleneck blocks (200: N=22, 272: N=30).
        alpha: total widening over the network; block i (of 3N) has width round(16 + alpha * i / 3N).
        block: "basic" or "bottleneck".
        shakedrop: ShakeDrop probability p_L of the last block; block l gets l/L * p_L (0 disables; the
            PyramidNet+ShakeDrop recipe uses 0.5).
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero (its last BN weight = 0).
    """

    def __init__(
        self,
        depth: int = 110,
        alpha: float = 270,
        block: str = "basic",
        *,
        shakedrop: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        check_choice("block", block, BLOCKS)
        step = 3 * LAYERS_PER_BLOCK[block]
        n = blocks_for_depth(depth, step, 2)
        if n is None:
            examples = "110, 164, 272" if block == "basic" else "164, 200, 272"
            raise ConfigError(
                f"PyramidNet depth must be {step}N+2 with N >= 1 for block={block!r} ({examples}, ...), got {depth!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ConfigError(f"PyramidNet alpha must be a number >= 0 (the total widening), got {alpha!r}")
        check_probability("shakedrop", shakedrop)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        total_blocks = 3 * n
        # Widths from the closed form rather than a running float sum, so rounding cannot drift.
        widths = [[round(16 + alpha * (stage * n + i + 1) / total_blocks) for i in range(n)] for stage in range(3)]

        # The stem ends in BN with no ReLU: the first block's identity path sees the normalised conv output.
        self.stem = conv_bn_act(in_channels, 16, act=False)
        self.stages, channels = make_stages(
            BLOCKS[block], (n, n, n), widths, 16, drop_path=drop_path, shakedrop=shakedrop
        )
        self.head = ClassifierHead(channels, num_classes, pre_act=True)
        init_weights(self, zero_init_residual)
