"""Building blocks shared by the model families: stochastic depth, shortcuts, initialisation, argument checks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.errors import ConfigError


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Per-block drop probabilities rising linearly to `rate` at the last block (Huang et al. 2016, p_l = l/L p_L).

    The first block gets rate/L rather than 0 so that every block is regularised a little, as in the paper.
    """
    check_probability("drop_path", rate)
    return [rate * (i + 1) / num_blocks for i in range(num_blocks)]


class DropPath(nn.Module):
    """Stochastic depth: zero the whole residual branch for a random subset of the samples in a batch.

    Kept samples are scaled by 1/(1-p) during training so that evaluation needs no rescaling (identity in eval).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        check_probability("drop_path", p)
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # One draw per sample, broadcast over C, H, W; bernoulli_ on a tensor of x's dtype keeps bf16 autocast happy.
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class ZeroPadShortcut(nn.Module):
    """Parameter-free identity shortcut that widens by appending zero channels (He et al. 2015, option A).

    Spatial downsampling is either plain subsampling (He 2015) or a 2x2 average pool (PyramidNet), chosen by `pool`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, pool: str = "subsample"):
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(
                f"a zero-padded shortcut cannot shrink channels ({in_channels} -> {out_channels}); "
                "use a projection shortcut"
            )
        check_choice("pool", pool, ("subsample", "avg"))
        self.extra = out_channels - in_channels
        self.stride = stride
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            if self.pool == "avg":
                x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
            else:
                x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}, pool={self.pool}"


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # No bias: every conv in these networks is followed (or, pre-activation, preceded) by a BatchNorm.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN where the residual changes shape (He et al. 2015, option B)."""
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (kaiming) normal init for convs, unit BN, zero biases; optionally silence every residual branch.

    fan_out follows fb.resnet.torch / torchvision. With `zero_init_residual`, each block that defines
    `zero_init_last()` makes its branch output zero at start, so every residual block begins as the identity
    (Goyal et al. 2017): for post-activation blocks that is the last BN's weight, for pre-activation blocks,
    which end in a conv, it is that conv's weight.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            # Keep PyTorch's default (kaiming-uniform) weight; a zero bias gives uniform initial class scores.
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()


# ---- argument checks: one readable ConfigError naming the argument and what is allowed -------------------------


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {allowed}; got {value!r}")


def check_int_sequence(name: str, value, length: int | None = None) -> tuple[int, ...]:
    """Accept a list/tuple (or OmegaConf ListConfig) of positive ints and return it as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of positive integers, got {value!r}")
    items = tuple(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ConfigError(f"{name} must be a non-empty list of positive integers, got {list(items)!r}")
    if length is not None and len(items) != length:
        raise ConfigError(f"{name} must have {length} entries (one per stage), got {len(items)}: {list(items)!r}")
    return items
