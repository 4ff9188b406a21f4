"""Building blocks shared by the model families: the stem/stages/head skeleton, stochastic depth, shortcuts,
initialisation, argument checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.errors import ConfigError


def drop_path_rates(rate: float, num_blocks: int, name: str = "drop_path") -> list[float]:
    """Per-block drop probabilities rising linearly to `rate` at the last block (Huang et al. 2016, p_l = l/L p_L).

    The first block gets rate/L rather than 0 so that every block is regularised a little, as in the paper. ShakeDrop
    (Yamada et al.) spreads its probability by the same rule; `name` is the argument an error message names.
    """
    check_probability(name, rate)
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


def dropout_layer(p: float) -> nn.Module:
    # Identity when off, so that a disabled dropout leaves no no-op layer in the module tree or the compiled graph.
    return nn.Dropout(p) if p > 0 else nn.Identity()


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # No bias: every conv in these networks is followed (or, pre-activation, preceded) by a BatchNorm.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def conv_bn_act(in_channels: int, out_channels: int, *, act: bool = True) -> nn.Sequential:
    """3x3 stride-1 conv, BN and (optionally) ReLU: the CIFAR stem, which keeps 32x32 (no 7x7 conv, no max-pool).

    Pre-activation networks use a bare conv3x3 stem instead: their first block starts with its own BN-ReLU.
    """
    layers = [conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


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


# ---- the stem -> stages -> head skeleton ---------------------------------------------------------------------------

# depth -> (block, blocks per stage) of He et al.'s ImageNet table, shared by the post- and pre-activation ResNets.
IMAGENET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)


def imagenet_layout(depth, error: str) -> tuple[str, tuple[int, ...]]:
    """(block, blocks per stage) for an ImageNet-table depth, else a ConfigError from the `error` template, which
    may use {valid} (the valid depths) and {depth}."""
    if depth not in IMAGENET_LAYOUTS:
        raise ConfigError(error.format(valid=", ".join(str(d) for d in IMAGENET_LAYOUTS), depth=depth))
    return IMAGENET_LAYOUTS[depth]


def make_stages(
    block_fn: Callable[..., nn.Module],
    layers: Sequence[int],
    widths: Sequence,
    in_channels: int,
    **rates: float,
) -> tuple[nn.Sequential, int]:
    """Build the residual stages: an nn.Sequential of one nn.Sequential per stage, and the channels it outputs.

    Args:
        block_fn: ``block_fn(in_channels, width, stride, **rates)`` builds one block, which exposes `out_channels`.
        layers: blocks per stage.
        widths: per stage, the width (or whatever spec block_fn takes) of all its blocks, or a list with one per
            block where the width changes inside a stage (PyramidNet).
        in_channels: channels entering the first stage.
        rates: per-block regularisation probabilities, e.g. ``drop_path=0.2``: each rises linearly over all blocks to
            its value at the last one (see drop_path_rates) and reaches block_fn under its own name.
    """
    total = sum(layers)
    per_block = {name: drop_path_rates(rate, total, name) for name, rate in rates.items()}
    index = 0
    channels = in_channels
    stages = []
    for stage_index, (num_blocks, width) in enumerate(zip(layers, widths, strict=True)):
        block_widths = width if isinstance(width, list) else [width] * num_blocks
        if len(block_widths) != num_blocks:
            raise ValueError(f"stage {stage_index} has {num_blocks} blocks but {len(block_widths)} widths")
        blocks = []
        for block_index, block_width in enumerate(block_widths):
            # Every stage after the first halves the resolution in its first block, CIFAR-style (32 -> 16 -> 8 ...).
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            block = block_fn(channels, block_width, stride, **{name: p[index] for name, p in per_block.items()})
            channels = block.out_channels
            blocks.append(block)
            index += 1
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), channels


class ClassifierHead(nn.Module):
    """[BN-ReLU] - global average pool - dropout - [hidden linear - ReLU - dropout] - linear.

    Args:
        in_features: channels of the feature map.
        pre_act: start with BN-ReLU, for pre-activation networks whose last block ends in an un-normalised sum.
        hidden: width of a hidden linear layer (0 for none).
        dropout: dropout before each linear layer.
    """

    def __init__(self, in_features: int, num_classes: int, *, pre_act: bool = False, hidden: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.norm = nn.BatchNorm2d(in_features) if pre_act else nn.Identity()
        self.act = nn.ReLU(inplace=True) if pre_act else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = dropout_layer(dropout)
        if hidden:
            self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), dropout_layer(dropout))
        else:
            self.hidden = nn.Identity()
        self.fc = nn.Linear(hidden or in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.norm(x)))
        return self.fc(self.hidden(self.drop(torch.flatten(x, 1))))


class StagedNet(nn.Module):
    """stem -> stages -> head. Subclasses build the three; the forward_features/forward_head split follows timm."""

    stem: nn.Module
    stages: nn.Module
    head: ClassifierHead

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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


def blocks_for_depth(depth, layers_per_block: int, extra: int) -> int | None:
    """n with depth = layers_per_block * n + extra and n >= 1, or None when depth is not of that form."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < layers_per_block + extra:
        return None
    n, remainder = divmod(depth - extra, layers_per_block)
    return None if remainder else n


class InitializedFromData(nn.Module):
    """A network with a data-dependent initialisation (airbench's whitening conv). On a fresh start the trainer
    hands `init_from_data` the first `data_init_samples` normalised training images, once; a resume restores the
    result with the weights instead."""

    data_init_samples: int = 5000

    def init_from_data(self, images: torch.Tensor) -> None:
        raise NotImplementedError
