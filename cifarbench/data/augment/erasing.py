"""Ops on normalised float images: Cutout and RandomErasing (their fill 0 is the dataset's mean colour)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from cifarbench.data.augment.base import (
    AugmentOp,
    _arange,
    _constant,
    _outer_and,
    _PerSample,
    _rand,
    _randint,
    _select,
    _uniform,
)
from cifarbench.errors import ConfigError

# ---------------------------------------------------------------------------------- float (normalised) ops


def _box_mask(top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, height: int, width: int) -> Tensor:
    """0/1 uint8 (..., height, width) masks of the boxes [top, bottom) x [left, right); inputs share shape (...)."""
    rows = _arange(height, top.device)
    cols = _arange(width, top.device)
    in_rows = (rows >= top[..., None]) & (rows < bottom[..., None])
    in_cols = (cols >= left[..., None]) & (cols < right[..., None])
    return _outer_and(in_rows, in_cols)


class Cutout(AugmentOp):
    """DeVries & Taylor 2017: zero `n_holes` squares of `length` px whose centres are uniform over the image.

    Squares are clipped at the borders, so one near an edge covers less. `inside=true` places each square wholly
    inside the image instead, its top-left corner uniform over the positions where it fits, so every square covers
    length^2 pixels (airbench96's Cutout). Runs after normalisation, so 0 is the dataset's mean colour, as in the
    paper's code.
    """

    stage = "float"

    def __init__(self, n_holes: int = 1, length: int = 16, inside: bool = False):
        if int(n_holes) < 0 or int(length) < 0:
            raise ConfigError(f"augment cutout: n_holes={n_holes} and length={length} must be >= 0")
        self.n_holes = int(n_holes)
        self.length = int(length)
        self.inside = bool(inside)

    def torchvision(self, mean, std):
        return _PerSample(self)

    def sample_mask(self, n: int, height: int, width: int, generator, device) -> Tensor:
        """Bool (n, height, width): True where some hole covers the pixel."""
        if self.inside:
            if self.length > min(height, width):
                raise ConfigError(f"augment cutout: length={self.length} with inside=true does not fit a "
                                  f"{height}x{width} image")
            top = _randint(height - self.length + 1, (n, self.n_holes), generator, device)
            left = _randint(width - self.length + 1, (n, self.n_holes), generator, device)
            return _box_mask(top, left, top + self.length, left + self.length, height, width).any(1).bool()
        cy = _randint(height, (n, self.n_holes), generator, device)
        cx = _randint(width, (n, self.n_holes), generator, device)
        half = self.length // 2
        boxes = _box_mask(
            (cy - half).clamp(0, height), (cx - half).clamp(0, width),
            (cy + half).clamp(0, height), (cx + half).clamp(0, width), height, width,
        )  # fmt: skip
        return boxes.any(1).bool()  # any() of uint8 is uint8

    def __call__(self, images, generator):
        n, _, height, width = images.shape
        keep = ~self.sample_mask(n, height, width, generator, images.device)
        # A 0/1 multiply (exact for finite values) is several times faster than masked_fill on the CPU.
        return images * keep.unsqueeze(1).to(images.dtype)


class RandomErasing(AugmentOp):
    """Zhong et al. 2020, as torchvision's: with probability p erase one box of area `scale` and aspect `ratio`.

    Like torchvision, up to 10 (area, aspect) draws are tried and the first box that fits is erased; a sample with
    no fitting draw is left alone. `value` is a number or one per channel, in normalised units.
    """

    stage = "float"
    _ATTEMPTS = 10

    def __init__(
        self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float | Sequence[float] = 0.0
    ):
        if isinstance(value, str):
            raise ConfigError(f"augment random_erasing: value={value!r} is not supported; use a number")
        if not 0 <= float(scale[0]) <= float(scale[1]) <= 1:
            raise ConfigError(f"augment random_erasing: scale={list(scale)} must be increasing within [0, 1]")
        if not 0 < float(ratio[0]) <= float(ratio[1]):
            raise ConfigError(f"augment random_erasing: ratio={list(ratio)} must be positive and increasing")
        self.p = float(p)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.value = float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in value)

    def torchvision(self, mean, std):
        value = self.value if isinstance(self.value, float) else list(self.value)
        return v2.RandomErasing(p=self.p, scale=self.scale, ratio=self.ratio, value=value)

    def sample_mask(self, n: int, height: int, width: int, generator, device) -> Tensor:
        shape = (n, self._ATTEMPTS)
        area = height * width * _uniform(shape, self.scale[0], self.scale[1], generator, device)
        aspect = torch.exp(
            _uniform(shape, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, device)
        )
        box_h = torch.sqrt(area * aspect).round().long()
        box_w = torch.sqrt(area / aspect).round().long()
        fits = (box_h < height) & (box_w < width)
        first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits
        box_h, box_w = box_h.gather(1, first)[:, 0], box_w.gather(1, first)[:, 0]
        top = _randint(height - box_h + 1, (n,), generator, device)
        left = _randint(width - box_w + 1, (n,), generator, device)
        erase = (_rand((n,), generator, device) < self.p) & fits.any(1)
        # A sample left alone gets an empty box (bottom = top).
        return _box_mask(top, left, top + box_h * erase, left + box_w, height, width).bool()

    def __call__(self, images, generator):
        n, c, height, width = images.shape
        mask = self.sample_mask(n, height, width, generator, images.device)
        values = (self.value,) if isinstance(self.value, float) else self.value
        value = _constant(values, images.dtype, images.device).reshape(-1, 1, 1)
        return _select(mask[:, None], value.expand(c, 1, 1), images)
