"""The pieces every augmentation op shares: the AugmentOp interface, seeded per-sample random draws,
cached device constants and exact CPU-fast tensor helpers (see the package docstring for why)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

STAGES = ("uint8", "float")


# ----------------------------------------------------------------------------------------------- random draws
# Small wrappers so every draw names its generator and device; a draw on the wrong device is an error in torch.


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _uniform(shape, low: float, high: float, generator, device) -> Tensor:
    return low + (high - low) * _rand(shape, generator, device)


def _randint(high: int | Tensor, shape, generator, device) -> Tensor:
    """Integers uniform in [0, high); `high` may be a tensor of per-sample bounds."""
    if isinstance(high, Tensor):
        return (_rand(shape, generator, device) * high).floor().long().clamp_max(high - 1)
    return torch.randint(high, shape, generator=generator, device=device)


# ------------------------------------------------------------------------------------- cached constants
# Built once per device and reused by every batch: a tensor made from Python values on a GPU is a blocking copy.
# Callers must never modify them in place.


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """torch.tensor(values, dtype, device), made once per (values, dtype, device)."""
    with torch.inference_mode(False):  # a cached inference tensor would be unusable outside inference mode
        return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _arange(end: int, device: torch.device) -> Tensor:
    """torch.arange(end) (int64) on `device`, made once."""
    with torch.inference_mode(False):
        return torch.arange(end, device=device)


@functools.lru_cache(maxsize=64)
def _pixel_centres(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """x (1, 1, width) and y (1, height, 1) of the pixel centres relative to the image centre, float32."""
    with torch.inference_mode(False):
        xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device).reshape(1, 1, width)
        ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
        return xs, ys.reshape(1, height, 1)


# ---------------------------------------------------------------------------------------- tensor helpers


def _per_sample(values: Tensor) -> Tensor:
    """(n,) -> (n, 1, 1, 1) float32, to broadcast one value per image."""
    return values.to(torch.float32).reshape(-1, 1, 1, 1)


def _to_uint8(pixels: Tensor) -> Tensor:
    """float -> uint8, truncating, for values already in [0, 256) as every kernel here clamps them.

    On the CPU torch's direct float -> uint8 cast is not vectorised and takes ~3x as long as going through int32,
    which truncates identically in that range.
    """
    if pixels.device.type == "cpu":
        return pixels.to(torch.int32).to(torch.uint8)
    return pixels.to(torch.uint8)


def _trunc(pixels: Tensor) -> Tensor:
    """float in [0, 256) -> the float of its uint8 cast (the fraction dropped), in place.

    floor_, as the values are >= 0: on the CPU trunc_ is not vectorised and takes ~10x as long.
    """
    return pixels.floor_()


def _select(mask: Tensor, if_true: Tensor, if_false: Tensor) -> Tensor:
    """Per-sample choice between two batches; mask is (n,) or broadcastable to the images.

    On the CPU torch.where is not vectorised (~20x slower than a multiply). With a 0/1 mask one of the two uint8
    products is 0, so the multiply-add is exact and cannot overflow; for floats lerp(if_false, if_true, mask) is
    exactly one or the other for finite values (its weight-1 branch computes end - (end - start) * 0).
    """
    if mask.dim() == 1:
        mask = mask.reshape(-1, *([1] * (if_true.dim() - 1)))
    if if_true.is_floating_point():
        if if_true.device.type != "cpu":
            return torch.where(mask, if_true, if_false)
        return torch.lerp(if_false, if_true, mask.to(if_true.dtype))
    mask = mask.to(if_true.dtype)
    return if_true * mask + if_false * (1 - mask)


def _outer_and(rows: Tensor, cols: Tensor) -> Tensor:
    """rows[..., :, None] & cols[..., None, :] as a 0/1 uint8 mask: broadcast bool ops are slow on the CPU."""
    return rows.to(torch.uint8)[..., :, None] * cols.to(torch.uint8)[..., None, :]


def _gather_pixels(images: Tensor, flat_index: Tensor, inside: Tensor | None) -> Tensor:
    """out[i, :, p] = images[i, :, flat_index[i, p]] (row * width + col), and 0 where `inside` is 0 or False.

    flat_index: (n, out_h, out_w) int64, valid everywhere (point outside pixels at any valid one). One gather
    over the flattened pixels serves every channel, so no float copy of the images is made.
    """
    n, c, height, width = images.shape
    out_hw = flat_index.shape[1:]
    flat = flat_index.reshape(n, 1, -1).expand(n, c, -1)
    out = images.reshape(n, c, height * width).gather(2, flat).reshape(n, c, *out_hw)
    if inside is not None:
        out = out * inside.unsqueeze(1).to(out.dtype)  # 0/1 mask: exact for any dtype
    return out


# ---------------------------------------------------------------------------------------------------- base


class AugmentOp:
    """One augmentation; subclasses set `stage` and implement `torchvision` and `__call__`."""

    stage: str = "uint8"
    # True for ops that depend on which image it is and which epoch (the alternating flip): the on-device loader
    # then calls them with index=, epoch= and seed= as well.
    uses_position: bool = False

    def torchvision(self, mean: Sequence[float], std: Sequence[float]) -> Callable[[Tensor], Tensor]:
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _PerSample(v2.Transform):
    """A v2 transform for one image that runs the batched op on a batch of one.

    Used only where torchvision has no class of its own (Cutout). The draw comes from torch's global RNG, like
    every other torchvision transform in a DataLoader worker (which seeds it per worker).
    """

    def __init__(self, op: AugmentOp):
        super().__init__()
        self.op = op

    def forward(self, image: Tensor) -> Tensor:
        return self.op(image.unsqueeze(0), None).squeeze(0)

    def extra_repr(self) -> str:
        return repr(self.op)
