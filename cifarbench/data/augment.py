"""Augmentation ops, each in two forms that share one set of semantics.

* `op.torchvision(mean, std)` is a torchvision.transforms.v2 transform for ONE image tensor, for the per-sample
  DataLoader path. It is torchvision's own transform wherever one exists.
* `op(images, generator)` is the batched form for the on-device path: (N, C, H, W) on any device, every sample
  gets its own random draw, and `generator` is the only source of randomness, so a seeded generator reproduces a
  batch exactly.

`stage` says where an op runs: "uint8" ops see raw uint8 images before normalisation, "float" ops (Cutout,
RandomErasing) see normalised float images, so their fill value 0 is the dataset's mean colour.

The batched policy ops (AutoAugment, RandAugment, TrivialAugmentWide) draw an op and a magnitude per sample, group
the samples by the op they drew, and run each op once on its group. Their magnitude bins, fills (0) and
interpolation (nearest) are torchvision's, and the image ops below mirror torchvision.transforms.v2.functional with a
per-sample magnitude in place of its scalar argument.

Host <-> device traffic (the data path must never starve a GPU): on CUDA the batched ops only queue kernels, so the
next batch is augmented while the current training step still runs, as long as nothing makes the host wait for the
device. So no op builds a tensor from Python values per batch (`torch.tensor(..., device=cuda)` is a blocking copy
that waits for all queued work): constants are made once per (values, dtype, device) and cached (`_constant`,
`_arange`, `_pixel_centres`, `_magnitude_table`, `_autoaugment_tables`), and nothing reads device values back
(`.item()`, `.tolist()`, `bool(tensor)`, boolean-mask indexing, `torch.bincount` and `torch.unique` all wait).
* RandomCrop, HorizontalFlip, ColorJitter, Cutout, RandomErasing and `normalize` need no host read at all.
  ColorJitter does not group by op: each of its steps is one masked blend over the whole batch (factor 1, an exact
  identity, for the samples not in it) and the hue rotation runs once over the whole batch, between the steps
  before and after each sample's hue step.
* The policy ops need exactly ONE device -> host read per batch: the host has to know how many samples drew each
  op to cut the batch into per-op groups, so `apply_steps` reads the group sizes of all the policy's steps at once.
tests/test_augment.py checks both with a dispatch-mode counter (HostTraffic).

CPU speed: torch.where, trunc_, bool ops that broadcast and float -> uint8 casts are not vectorised on the CPU
(3-25x slower than arithmetic), so the kernels use exact equivalents (`_select`, `_trunc`, `_outer_and`,
`_to_uint8`, 0/1 products, lerps with 0/1 weights), which give the same bits for finite values.

`build_pipeline(augment, mean, std)` turns the Hydra `augment` node (name -> op config, applied in key order) into
both pipelines: uint8 ops, then normalisation, then float ops.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cifarbench.errors import ConfigError

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


# ---------------------------------------------------------------------------------------------- crop / flip


def _reflect(index: Tensor, size: int) -> Tensor:
    """Mirror out-of-range indices like torch's "reflect" padding (the edge pixel is not repeated)."""
    return (size - 1) - ((size - 1) - index.abs()).abs()  # |i| if |i| <= size - 1, else 2 (size - 1) - |i|


class _SameSizeRandomCrop(v2.Transform):
    """torchvision's RandomCrop with the crop size taken from each input (v2.RandomCrop needs it up front)."""

    def __init__(self, padding: int, padding_mode: str):
        super().__init__()
        self.padding = padding
        self.padding_mode = padding_mode
        self._crops: dict[tuple[int, int], v2.RandomCrop] = {}

    def forward(self, image: Tensor) -> Tensor:
        size = tuple(image.shape[-2:])
        if size not in self._crops:
            self._crops[size] = v2.RandomCrop(size, padding=self.padding, padding_mode=self.padding_mode)
        return self._crops[size](image)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, padding_mode={self.padding_mode!r}"


class RandomCrop(AugmentOp):
    """Pad by `padding` px on each side ("reflect" or "constant" zeros), then take a random `size` crop.

    size=None keeps the input size, the CIFAR idiom RandomCrop(32, padding=4). The batched form never builds the
    padded image: it gathers each output pixel from its source pixel, mirrored or zeroed outside the image.
    """

    def __init__(
        self, size: int | Sequence[int] | None = None, padding: int = 4, padding_mode: str = "reflect"
    ):
        if padding_mode not in ("reflect", "constant"):
            raise ConfigError(
                f"augment crop: padding_mode={padding_mode!r} is not supported; use reflect or constant"
            )
        if int(padding) < 0:
            raise ConfigError(f"augment crop: padding={padding} must be >= 0")
        if isinstance(size, int):
            size = (size, size)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.padding = int(padding)
        self.padding_mode = padding_mode

    def torchvision(self, mean, std):
        if self.size is None:
            return _SameSizeRandomCrop(self.padding, self.padding_mode)
        return v2.RandomCrop(self.size, padding=self.padding, padding_mode=self.padding_mode)

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        out_h, out_w = self.size or (height, width)
        if out_h > height + 2 * self.padding or out_w > width + 2 * self.padding:
            raise ConfigError(
                f"augment crop: size {out_h}x{out_w} is larger than the padded {height}x{width} image; "
                f"lower size or raise padding"
            )
        if self.padding_mode == "reflect" and self.padding >= min(height, width):
            raise ConfigError(f"augment crop: reflect padding {self.padding} needs images larger than it")
        return out_h, out_w

    def sample_offsets(self, n: int, height: int, width: int, generator, device) -> tuple[Tensor, Tensor]:
        """Per-sample (top, left) of the crop in padded coordinates: uniform in [0, padded - size]."""
        out_h, out_w = self._output_size(height, width)
        top = _randint(height + 2 * self.padding - out_h + 1, (n,), generator, device)
        left = _randint(width + 2 * self.padding - out_w + 1, (n,), generator, device)
        return top, left

    def __call__(self, images, generator):
        n, _, height, width = images.shape
        out_h, out_w = self._output_size(height, width)
        top, left = self.sample_offsets(n, height, width, generator, images.device)
        # Source row/column of every output pixel, in unpadded coordinates (may fall outside the image).
        rows = top[:, None] - self.padding + _arange(out_h, images.device)  # (n, out_h)
        cols = left[:, None] - self.padding + _arange(out_w, images.device)  # (n, out_w)
        if self.padding_mode == "reflect":
            rows, cols = _reflect(rows, height), _reflect(cols, width)
            inside = None
        else:  # constant padding: zeros outside the image
            inside = _outer_and((rows >= 0) & (rows < height), (cols >= 0) & (cols < width))
            rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
        return _gather_pixels(images, rows[:, :, None] * width + cols[:, None, :], inside)


class HorizontalFlip(AugmentOp):
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def torchvision(self, mean, std):
        return v2.RandomHorizontalFlip(self.p)

    def __call__(self, images, generator):
        flip = _rand((images.shape[0],), generator, images.device) < self.p
        return _select(flip, images.flip(-1), images)


# ------------------------------------------------------------------------------------ uint8 image kernels
# Each mirrors the torchvision.transforms.v2.functional kernel of the same name on uint8 tensors, with a
# per-sample parameter of shape (n,) instead of a Python scalar. Colour blends truncate like torchvision's.


# The colour kernels come in two forms: on uint8 images (the policy ops), and, for ColorJitter's chain of four,
# on float32 images holding whole numbers, truncated after every op exactly as the cast to uint8 would, so the
# chain converts to float once instead of once per op. `_*_pixels` return the clamped float before truncation.


def _blend_pixels(image1: Tensor, image2: Tensor | float, ratio: Tensor) -> Tensor:
    # Same formula as torchvision's; its CPU kernel fuses the multiply-add, so a pixel may differ by 1 level.
    ratio = _per_sample(ratio)
    if isinstance(image2, float) and image2 == 0.0:  # x * f + 0 * (1 - f) is x * f exactly
        return image1.mul(ratio).clamp_(0, 255)
    return image1.mul(ratio).add_(image2 * (1.0 - ratio)).clamp_(0, 255)


def _blend(image1: Tensor, image2: Tensor, ratio: Tensor) -> Tensor:
    return _to_uint8(_blend_pixels(image1, image2, ratio))


def _grayscale(images: Tensor) -> Tensor:
    """Luma (n, 1, H, W) as float with the fraction dropped, as torchvision's colour kernels use it; uint8 or
    whole-number float images. TF.rgb_to_grayscale's arithmetic, whose uint8 cast and back is `_trunc`."""
    r, g, b = images.unbind(1)
    return _trunc(r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)).unsqueeze(1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _to_uint8(_blend_pixels(images, 0.0, factor))


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    if images.shape[1] == 1:  # grey images have no saturation (torchvision returns them unchanged)
        return images
    return _blend(images, _grayscale(images), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    grey = _grayscale(images) if images.shape[1] == 3 else images.to(torch.float32)
    return _blend(images, grey.mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_sharpness(images: Tensor, factor: Tensor) -> Tensor:
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return images
    out = images.to(torch.float32)
    inner = out[..., 1:-1, 1:-1]  # the border keeps its pixels, as in PIL and torchvision
    # torchvision blurs with a 3x3 kernel of 1s around a 5, over 13. On integer pixels the weighted sum is an
    # integer, so summing exactly (3x3 box sum + 4 x centre) and dividing once rounds exactly like its
    # depthwise convolution. Shifted-slice sums are much faster than that convolution (or avg_pool2d) on the CPU.
    row_sums = out[..., :, :-2] + out[..., :, 1:-1] + out[..., :, 2:]
    box = row_sums[..., :-2, :] + row_sums[..., 1:-1, :] + row_sums[..., 2:, :]
    blurred = box.add_(inner, alpha=4).div_(13).round_()
    inner.add_((blurred - inner) * (1.0 - _per_sample(factor)))
    return _to_uint8(out.clamp_(0, 255))


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    shift = 8 - bits.to(torch.int32).reshape(-1, 1, 1, 1)
    mask = (torch.full_like(shift, 255) << shift) & 255  # keep the top `bits` bits
    return images & mask.to(torch.uint8)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert pixels >= threshold (in uint8 units): XOR with 255 inverts a uint8, XOR with 0 keeps it."""
    return images ^ (images >= _per_sample(threshold)).to(torch.uint8).mul_(255)


def autocontrast(images: Tensor) -> Tensor:
    """TF.autocontrast, bit for bit, without its boolean-mask assignments (`x[mask] = v` waits for a GPU)."""
    if images.shape[1] not in (1, 3):
        raise TypeError(f"autocontrast takes 1 or 3 channels, got {images.shape[1]}")
    pixels = images.to(torch.float32)
    minimum = pixels.amin(dim=(-2, -1), keepdim=True)
    maximum = pixels.amax(dim=(-2, -1), keepdim=True)
    flat = maximum == minimum  # a constant channel is left alone
    inv_scale = maximum.sub_(minimum).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    return _to_uint8(pixels.sub_(minimum.masked_fill_(flat, 0.0)).div_(inv_scale).clamp_(0, 255))


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]), like TF.adjust_hue.

    A hue rotation keeps each pixel's max and min channel (HSV's V and S), so rather than a full RGB -> HSV -> RGB
    round trip this finds the hue position h6 in sextants and rebuilds the channels directly:
    max - (max - min) * clamp(min(k, 4 - k), 0, 1), with k = (n + h6) mod 6 and n = 5, 3, 1 for r, g, b.
    """
    if images.shape[1] == 1:
        return images
    return _to_uint8(_hue_pixels(images, shift))


def _hue_pixels(images: Tensor, shift: Tensor) -> Tensor:
    """adjust_hue of uint8 or whole-number float RGB images, before the final truncation (values in [0, 256))."""
    rgb = images.mul(1.0 / 255)  # TF.to_dtype(images, torch.float32, scale=True)
    r, g, b = rgb.unbind(1)
    maxc, minc = rgb.amax(1), rgb.amin(1)
    delta = maxc - minc
    # Red at 0, green at 2, blue at 4 (as HSV's hue x 6): g - b if red is the max, else b - r + 2 if green is,
    # else r - g + 4, in units of delta. The choices are lerps with 0/1 weights, exact and much faster than
    # torch.where on the CPU. Grey pixels (delta 0) have h6 = 0 / delta_min = 0 and come out grey anyway.
    h6 = torch.lerp(
        (r - g).add_(delta, alpha=4), (b - r).add_(delta, alpha=2), (maxc == g).to(torch.float32)
    ).lerp_(g - b, (maxc == r).to(torch.float32))
    h6 = h6.div_(delta.clamp_min(1e-6)).add_(6.0 * shift.reshape(-1, 1, 1))  # delta > 0 is at least 1/255
    sextants = _constant((5.0, 3.0, 1.0), torch.float32, images.device).reshape(1, 3, 1, 1)
    k = h6.unsqueeze(1) + sextants
    # k mod 6 (k lies in [-3, 13]) as k - 6 floor(k / 6), much faster than remainder's fmod on the CPU. It is
    # fmod's exact value except just below a multiple of 6, where it gives a tiny negative number instead of
    # nearly 6: both have weight 0, so the pixels are the same.
    k = k.sub_(torch.floor(k * (1.0 / 6)).mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    # TF.to_dtype(..., torch.uint8, scale=True) scales by 255.999 and truncates (the values lie in [0, 1]).
    return (maxc.unsqueeze(1) - delta.unsqueeze(1) * weight).mul_(255.0 + 1.0 - 1e-3)


def _math_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _warp_nearest(images: Tensor, theta: Sequence[Tensor | float]) -> Tensor:
    """Per-sample affine warp, nearest neighbour, zero fill: torchvision's tensor affine with batched parameters.

    theta = (m0, m1, m2, m3, m4, m5) is torchvision's inverse matrix (_get_inverse_affine_matrix, about the image
    centre): each an (n,) tensor, or the float 0.0 or 1.0 where it is exactly that for every sample, whose terms
    are then left out (x * 1 is x, and a signed-zero term changes no sum that gets rounded).
    Each output pixel centre (x, y), relative to the image centre, samples the input at theta @ (x, y, 1).
    torchvision normalises that to grid_sample's [-1, 1] and grid_sample maps it back to pixels; written out, the
    source pixel is theta @ (x, y, 1) + (size - 1) / 2, rounded half to even (grid_sample's "nearest"). Doing it by
    hand on the uint8 pixels avoids a float copy of the images and the batched 3x2 matmul, both slow on the CPU.
    """
    n, _, height, width = images.shape
    xs, ys = _pixel_centres(height, width, images.device)

    def source(scale_x: Tensor | float, scale_y: Tensor | float, shift: Tensor | float, size: int) -> Tensor:
        total = None
        for scale, coords in ((scale_x, xs), (scale_y, ys)):
            if isinstance(scale, Tensor):
                term = scale.to(torch.float32).reshape(n, 1, 1) * coords
            elif scale == 1.0:
                term = coords
            else:
                continue
            total = term if total is None else total + term
        centre = (size - 1) * 0.5
        offset = shift.to(torch.float32).reshape(n, 1, 1) + centre if isinstance(shift, Tensor) else centre
        return (total + offset).round_()  # broadcast: (n or 1, height or 1, width or 1)

    cols = source(theta[0], theta[1], theta[2], width)
    rows = source(theta[3], theta[4], theta[5], height)
    inside_cols, inside_rows = (cols >= 0) & (cols <= width - 1), (rows >= 0) & (rows <= height - 1)
    if inside_cols.shape == inside_rows.shape:
        inside = inside_cols & inside_rows
    else:  # broadcast bool ops are slow on the CPU
        inside = inside_cols.to(torch.uint8) * inside_rows.to(torch.uint8)
    flat = (rows * width + cols).mul_(inside)  # outside pixels read pixel 0, then get zeroed
    return _gather_pixels(images, flat.long(), inside)


# The inverse matrices of the policy ops' warps, written out from torchvision's _get_inverse_affine_matrix with
# scale 1 and the other parameters 0, in float64 like its Python-float version. They are the general formula's
# values exactly: its terms in sin(0), tan(0) and translations of 0 are (signed) zeros, cos(0) is 1.


def shear_x(images: Tensor, magnitude: Tensor) -> Tensor:
    # AutoAugment's shears are about the top-left corner: centre (-width/2, -height/2) from the image centre.
    height, width = images.shape[-2:]
    t = torch.tan(torch.atan(magnitude).to(_math_dtype(images.device)))
    return _warp_nearest(images, (1.0, t, (t * (height * 0.5) + width * 0.5) - width * 0.5, 0.0, 1.0, 0.0))


def shear_y(images: Tensor, magnitude: Tensor) -> Tensor:
    height, width = images.shape[-2:]
    angle = torch.atan(magnitude).to(_math_dtype(images.device))
    cos = torch.cos(angle)
    m3, m4 = torch.sin(-angle).div_(cos).neg_(), torch.cos(-angle).div_(cos)
    return _warp_nearest(images, (1.0, 0.0, 0.0, m3, m4, (m3 * (width * 0.5) + m4 * (height * 0.5)) - height * 0.5))


def translate_x(images: Tensor, pixels: Tensor) -> Tensor:
    # torchvision's policy ops translate by int(magnitude): truncation towards zero.
    return _warp_nearest(images, (1.0, 0.0, pixels.trunc().neg_(), 0.0, 1.0, 0.0))


def translate_y(images: Tensor, pixels: Tensor) -> Tensor:
    return _warp_nearest(images, (1.0, 0.0, 0.0, 0.0, 1.0, pixels.trunc().neg_()))


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Counter-clockwise rotation about the centre (TF.rotate's sense)."""
    degrees = degrees.to(_math_dtype(images.device)).remainder(360.0)
    angle = torch.deg2rad(-degrees)  # the inverse map turns the other way
    cos, sin = torch.cos(angle), torch.sin(angle)
    return _warp_nearest(images, (cos, sin, 0.0, -sin, cos, 0.0))


# ------------------------------------------------------------------------------------- the policy-op space
# name -> batched kernel taking (uint8 images, per-sample signed magnitude in torchvision's units).
POLICY_OPS: dict[str, Callable[[Tensor, Tensor], Tensor] | None] = {
    "Identity": None,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Brightness": lambda x, m: adjust_brightness(x, 1.0 + m),
    "Color": lambda x, m: adjust_saturation(x, 1.0 + m),
    "Contrast": lambda x, m: adjust_contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: adjust_sharpness(x, 1.0 + m),
    "Posterize": posterize,
    "Solarize": lambda x, m: solarize(x, 255.0 * m),
    "AutoContrast": lambda x, m: autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
    "Invert": lambda x, m: TF.invert(x),
}

# Ops whose magnitude gets a random sign (each with probability 1/2), as in torchvision.
SIGNED_OPS = frozenset(
    ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"]
)

# RandAugment/TrivialAugmentWide choose from these 14 ops (AutoAugment's Invert is not among them).
RAND_AUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip

# Largest magnitude of each linearly binned op; the "wide" space is TrivialAugmentWide's.
_MAX_MAGNITUDE = {"ShearX": 0.3, "ShearY": 0.3, "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9,
                  "Contrast": 0.9, "Sharpness": 0.9}  # fmt: skip
_MAX_MAGNITUDE_WIDE = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32.0, "TranslateY": 32.0, "Rotate": 135.0,
                       "Brightness": 0.99, "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99}  # fmt: skip


def magnitude_bins(op: str, num_bins: int, height: int, width: int, wide: bool = False) -> Tensor | None:
    """The magnitude of each bin of `op`, unsigned; None for ops without a magnitude. Same as torchvision's."""
    if op in ("Identity", "AutoContrast", "Equalize", "Invert"):
        return None
    if op == "Posterize":  # bits kept: 8 down to 4 (down to 2 in the wide space)
        return (8 - torch.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4))).round().int()
    if op == "Solarize":  # threshold as a fraction of 255: bin 0 solarizes nothing
        return torch.linspace(1.0, 0.0, num_bins)
    if not wide and op in ("TranslateX", "TranslateY"):  # AutoAugment's 150 px on 331 px images, rescaled
        return torch.linspace(0.0, 150.0 / 331.0 * (width if op == "TranslateX" else height), num_bins)
    return torch.linspace(0.0, (_MAX_MAGNITUDE_WIDE if wide else _MAX_MAGNITUDE)[op], num_bins)


@functools.lru_cache(maxsize=64)
def _magnitude_table(
    ops: tuple[str, ...], num_bins: int, height: int, width: int, wide: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(len(ops), num_bins) unsigned magnitudes (zero rows for ops without one) and (len(ops),) "is signed".

    Cached, so a training loop does not copy the tables to the device every batch.
    """
    rows = []
    for op in ops:
        bins = magnitude_bins(op, num_bins, height, width, wide)
        rows.append(torch.zeros(num_bins) if bins is None else bins.to(torch.float32))
    signed = torch.tensor([op in SIGNED_OPS for op in ops])
    return torch.stack(rows).to(device), signed.to(device)


def _draw_magnitudes(table: tuple[Tensor, Tensor], op_ids: Tensor, bins: Tensor | int, generator) -> Tensor:
    """Each sample's magnitude from the table, negated with probability 1/2 for signed ops."""
    magnitudes, signed = table
    values = magnitudes[op_ids, bins]
    negate = signed[op_ids] & (_rand(tuple(op_ids.shape), generator, values.device) < 0.5)
    return torch.where(negate, -values, values)


class OpDraw(NamedTuple):
    """One step of a policy op for a batch: which op each sample runs, with what magnitude, and whether."""

    op_ids: Tensor  # (n,) index into the op list
    magnitudes: Tensor  # (n,) signed, in torchvision's units
    active: Tensor | None  # (n,) bool; None (apply_steps only) means every sample


def apply_steps(
    images: Tensor, steps: Sequence[OpDraw], kernels: Sequence[Callable[[Tensor, Tensor], Tensor] | None]
) -> Tensor:
    """Run the steps in order; in each, kernels[op_ids[i]] on image i with magnitudes[i], one call per op.

    Inactive samples and None kernels (Identity) pass through. Each step's samples are sorted by op on the device
    (stable), and the sizes of every step's groups reach the host in ONE read, the only device -> host traffic of
    the whole call: the host needs them to cut the sorted batch into per-op groups. (Not torch.bincount: on CUDA
    it reads the input's min and max back first.) Each step gathers the batch into its sorted order (straight
    from the previous step's order), runs every non-empty group's kernel on its slice and writes the result
    over it; one last gather restores the batch order.
    """
    if not steps:
        return images
    k = len(kernels)
    ids = torch.stack(
        [d.op_ids if d.active is None else torch.where(d.active, d.op_ids, k) for d in steps]
    )  # (steps, n); k marks "runs nothing"
    order = torch.argsort(ids, dim=1, stable=True)
    counts = (ids.unsqueeze(-1) == _arange(k + 1, images.device)).sum(1).tolist()  # the one host read
    magnitudes = torch.stack([d.magnitudes for d in steps]).gather(1, order)
    position = torch.argsort(order, dim=1)  # where each sample sits in each step's order
    out, at = images, None  # `at`: the step whose order `out` is in (None: batch order)
    for step, step_counts in enumerate(counts):
        groups = [
            (kernel, start, count)
            for kernel, start, count in zip(kernels, itertools.accumulate([0, *step_counts]), step_counts)
            if kernel is not None and count
        ]
        if not groups:
            continue
        out = out.index_select(0, order[step] if at is None else position[at].index_select(0, order[step]))
        at = step
        for kernel, start, count in groups:
            out[start : start + count] = kernel(out[start : start + count], magnitudes[step, start : start + count])
    return out if at is None else out.index_select(0, position[at])


# ---------------------------------------------------------------------------------------------- policy ops

# The published CIFAR-10 policy (Cubuk et al. 2019, as in torchvision): 25 sub-policies of two
# (op, probability, magnitude bin of 10) steps each.
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
_AUTOAUGMENT_OPS = tuple(op for op in POLICY_OPS if op != "Identity")
_AUTOAUGMENT_KERNELS = tuple(POLICY_OPS[op] for op in _AUTOAUGMENT_OPS)
_RAND_AUGMENT_KERNELS = tuple(POLICY_OPS[op] for op in RAND_AUGMENT_OPS)


@functools.lru_cache(maxsize=16)
def _autoaugment_tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(2, 25) op index, probability and magnitude bin (0 where the op has none) of each (step, sub-policy)."""
    steps = tuple(zip(*CIFAR10_POLICY))
    return (
        _constant(tuple(tuple(_AUTOAUGMENT_OPS.index(op) for op, _, _ in step) for step in steps), torch.int64, device),
        _constant(tuple(tuple(p for _, p, _ in step) for step in steps), torch.float32, device),
        _constant(tuple(tuple(b or 0 for _, _, b in step) for step in steps), torch.int64, device),
    )


class AutoAugment(AugmentOp):
    """AutoAugment with the published CIFAR-10 policy: each sample draws one of the 25 sub-policies."""

    def __init__(self, policy: str = "cifar10"):
        if str(policy).lower() != "cifar10":
            raise ConfigError(f"augment autoaugment: policy={policy!r} is not supported; use cifar10")
        self.policy = "cifar10"

    def torchvision(self, mean, std):
        return v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def sample(self, n: int, height: int, width: int, generator, device) -> tuple[Tensor, list[OpDraw]]:
        """The sub-policy of each sample and the two steps it runs."""
        table = _magnitude_table(_AUTOAUGMENT_OPS, 10, height, width, False, device)
        op_table, prob_table, bin_table = _autoaugment_tables(device)
        sub = _randint(len(CIFAR10_POLICY), (n,), generator, device)
        all_op_ids, all_bins = op_table.index_select(1, sub), bin_table.index_select(1, sub)  # (2, n)
        all_probs = prob_table.index_select(1, sub)
        steps = []
        for step in range(2):
            op_ids = all_op_ids[step]
            # torchvision applies a step when rand <= p.
            active = _rand((n,), generator, device) <= all_probs[step]
            magnitudes = _draw_magnitudes(table, op_ids, all_bins[step], generator)
            steps.append(OpDraw(op_ids, magnitudes, active))
        return sub, steps

    def __call__(self, images, generator):
        n, _, height, width = images.shape
        _, steps = self.sample(n, height, width, generator, images.device)
        return apply_steps(images, steps, _AUTOAUGMENT_KERNELS)


class RandAugment(AugmentOp):
    """num_ops steps, each a uniformly drawn op at the fixed magnitude bin `magnitude` of `num_magnitude_bins`."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31):
        if not 0 <= int(magnitude) < int(num_magnitude_bins):
            raise ConfigError(
                f"augment randaugment: magnitude={magnitude} must lie in [0, num_magnitude_bins={num_magnitude_bins})"
            )
        if int(num_ops) < 0:
            raise ConfigError(f"augment randaugment: num_ops={num_ops} must be >= 0")
        self.num_ops = int(num_ops)
        self.magnitude = int(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)

    def torchvision(self, mean, std):
        return v2.RandAugment(self.num_ops, self.magnitude, self.num_magnitude_bins)

    def sample(self, n: int, height: int, width: int, generator, device) -> list[OpDraw]:
        table = _magnitude_table(RAND_AUGMENT_OPS, self.num_magnitude_bins, height, width, False, device)
        steps = []
        for _ in range(self.num_ops):
            op_ids = _randint(len(RAND_AUGMENT_OPS), (n,), generator, device)
            magnitudes = _draw_magnitudes(table, op_ids, self.magnitude, generator)
            steps.append(OpDraw(op_ids, magnitudes, torch.ones(n, dtype=torch.bool, device=device)))
        return steps

    def __call__(self, images, generator):
        n, _, height, width = images.shape
        return apply_steps(images, self.sample(n, height, width, generator, images.device), _RAND_AUGMENT_KERNELS)


class TrivialAugmentWide(AugmentOp):
    """One uniformly drawn op per sample at a uniformly drawn magnitude bin, in the wide magnitude space."""

    def __init__(self, num_magnitude_bins: int = 31):
        if int(num_magnitude_bins) < 2:
            raise ConfigError(f"augment trivialaugment: num_magnitude_bins={num_magnitude_bins} must be >= 2")
        self.num_magnitude_bins = int(num_magnitude_bins)

    def torchvision(self, mean, std):
        return v2.TrivialAugmentWide(self.num_magnitude_bins)

    def sample(self, n: int, height: int, width: int, generator, device) -> tuple[Tensor, OpDraw]:
        """The magnitude bin of each sample and its op draw."""
        table = _magnitude_table(RAND_AUGMENT_OPS, self.num_magnitude_bins, height, width, True, device)
        op_ids = _randint(len(RAND_AUGMENT_OPS), (n,), generator, device)
        bins = _randint(self.num_magnitude_bins, (n,), generator, device)
        magnitudes = _draw_magnitudes(table, op_ids, bins, generator)
        return bins, OpDraw(op_ids, magnitudes, torch.ones(n, dtype=torch.bool, device=device))

    def __call__(self, images, generator):
        n, _, height, width = images.shape
        _, draw = self.sample(n, height, width, generator, images.device)
        return apply_steps(images, [draw], _RAND_AUGMENT_KERNELS)


# -------------------------------------------------------------------------------------------- ColorJitter


def _jitter_range(value, name: str, center: float, bound: tuple[float, float]) -> tuple[float, float] | None:
    """torchvision's ColorJitter argument rule: x -> [center - x, center + x] clipped, or an explicit [lo, hi]."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"augment colorjitter: {name}={value} must be >= 0")
        low, high = center - value, center + value
        if center == 1.0:  # factors: a brightness etc. of 1.5 means [0, 2.5], not [-0.5, 2.5]
            low = max(low, 0.0)
    else:
        low, high = (float(v) for v in value)
    if not bound[0] <= low <= high <= bound[1]:
        raise ConfigError(f"augment colorjitter: {name} range [{low}, {high}] must lie within {bound}")
    return None if low == high == center else (float(low), float(high))


class ColorJitter(AugmentOp):
    """Random brightness, contrast, saturation and hue, in a random order per sample (as torchvision's).

    The batched form needs no host read (see the module docstring). Brightness, contrast and saturation are all
    the blend x * f + ref * (1 - f), with ref 0, the grey mean or the grey image, so each step is one blend over
    the whole batch with every sample's own ref, and f = 1 (exactly the identity) for samples that skip it. The
    hue rotation, the costly one, runs once over the whole batch: first the steps before each sample's hue step
    (steps 0-2), then hue, then the steps after it (1-3). Every sample sees its ops in its drawn order, each with
    the same arithmetic as the single kernels (adjust_brightness etc.), so the result is exactly theirs.
    """

    _HUE = 3  # factor and op index of hue; 0, 1, 2 are brightness, contrast and saturation

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self._ranges = (
            _jitter_range(brightness, "brightness", 1.0, (0.0, math.inf)),
            _jitter_range(contrast, "contrast", 1.0, (0.0, math.inf)),
            _jitter_range(saturation, "saturation", 1.0, (0.0, math.inf)),
            _jitter_range(hue, "hue", 0.0, (-0.5, 0.5)),
        )

    def torchvision(self, mean, std):
        return v2.ColorJitter(*self._ranges)

    def sample_factors(self, n: int, generator, device) -> tuple[Tensor, Tensor]:
        """(n, 4) factors (brightness, contrast, saturation, hue) and (n, 4) application order."""
        factors = torch.zeros(n, 4, device=device)
        for j, span in enumerate(self._ranges):
            if span is not None:
                factors[:, j] = _uniform((n,), span[0], span[1], generator, device)
        order = torch.argsort(_rand((n, 4), generator, device), dim=1)  # a random permutation per sample
        return factors, order

    def __call__(self, images, generator):
        n = images.shape[0]
        factors, order = self.sample_factors(n, generator, images.device)
        if images.device.type == "cpu" and n > self._CPU_CHUNK:
            chunks = zip(*(t.split(self._CPU_CHUNK) for t in (images, factors, order)))
            return torch.cat([self._jitter(*chunk) for chunk in chunks])
        return self._jitter(images, factors, order)

    # On the CPU the ~30 full-image float ops run on chunks of this many images, which stay in the cache; a
    # chunk's size is fixed, so nothing is read back to choose it.
    _CPU_CHUNK = 128

    def _jitter(self, images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
        brightness, contrast, saturation, hue = (r is not None for r in self._ranges)
        saturation = saturation and images.shape[1] != 1  # grey images have no saturation
        hue = hue and images.shape[1] != 1  # nor a hue
        if not (brightness or contrast or saturation):
            return _to_uint8(_hue_pixels(images, factors[:, self._HUE])) if hue else images
        pixels = images.to(torch.float32)  # whole numbers from here on, truncated after every op like uint8
        blends = _constant((brightness, contrast, saturation, False), torch.bool, images.device)

        def step(pixels: Tensor, index: int, when: Tensor | None) -> Tensor:
            op = order[:, index]
            return self._blend_step(pixels, factors, op, blends, when, contrast, saturation)

        if not hue:
            for index in range(4):
                pixels = step(pixels, index, None)
            return _to_uint8(pixels)
        hue_step = (order == self._HUE).to(torch.uint8).argmax(1)
        for index in range(3):  # the steps before each sample's hue step
            pixels = step(pixels, index, index < hue_step)
        pixels = _trunc(_hue_pixels(pixels, factors[:, self._HUE]))
        for index in range(1, 4):  # and those after it
            pixels = step(pixels, index, index > hue_step)
        return _to_uint8(pixels)

    @staticmethod
    def _blend_step(
        pixels: Tensor,
        factors: Tensor,
        op: Tensor,
        blends: Tensor,
        when: Tensor | None,
        contrast: bool,
        saturation: bool,
    ) -> Tensor:
        """Brightness, contrast or saturation (op 0, 1, 2) on each sample whose op is enabled, where `when`.

        pixels: float32 whole numbers; returns the same.
        """
        use = blends.index_select(0, op) if when is None else blends.index_select(0, op) & when
        ratio = torch.where(use, factors.gather(1, op[:, None])[:, 0], 1.0)  # f = 1 keeps the image exactly
        # The blend reference: 0 for brightness (x * f + 0 is adjust_brightness's x * f), the grey mean for contrast,
        # the grey image for saturation; exactly what adjust_contrast and adjust_saturation blend with.
        # Picked by 0/1 products (g * 1 + m * 0 is g exactly), as torch.where is slow on the CPU.
        ref: Tensor | float = 0.0
        if contrast or saturation:
            grey = _grayscale(pixels) if pixels.shape[1] == 3 else pixels
            if saturation:
                ref = grey * _per_sample(op == 2)
            if contrast:
                mean = grey.mean(dim=(1, 2, 3), keepdim=True).mul_(_per_sample(op == 1))
                ref = ref.add_(mean) if saturation else mean
        return _trunc(_blend_pixels(pixels, ref, ratio))


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

    Squares are clipped at the borders, so one near an edge covers less. Runs after normalisation, so 0 is the
    dataset's mean colour, as in the paper's code.
    """

    stage = "float"

    def __init__(self, n_holes: int = 1, length: int = 16):
        if int(n_holes) < 0 or int(length) < 0:
            raise ConfigError(f"augment cutout: n_holes={n_holes} and length={length} must be >= 0")
        self.n_holes = int(n_holes)
        self.length = int(length)

    def torchvision(self, mean, std):
        return _PerSample(self)

    def sample_mask(self, n: int, height: int, width: int, generator, device) -> Tensor:
        """Bool (n, height, width): True where some hole covers the pixel."""
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


# ------------------------------------------------------------------------------------------------ pipelines


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 -> float32 (x/255 - mean)/std, in the same order of operations as ToDtype(scale=True) + Normalize."""
    mean_t = _constant(tuple(float(m) for m in mean), torch.float32, images.device).reshape(1, -1, 1, 1)
    std_t = _constant(tuple(float(s) for s in std), torch.float32, images.device).reshape(1, -1, 1, 1)
    return TF.to_dtype(images, torch.float32, scale=True).sub_(mean_t).div_(std_t)


def build_ops(augment: Mapping[str, Any] | Sequence[AugmentOp] | None) -> list[AugmentOp]:
    """Ops from the `augment` node: a mapping name -> op config (a `_target_` dict, or null to skip), in key order.

    A ready list of ops passes through. Each entry must build an AugmentOp.
    """
    if augment is None:
        return []
    if isinstance(augment, Mapping) or hasattr(augment, "items"):
        items = list(augment.items())
    else:
        items = [(f"#{i}", op) for i, op in enumerate(augment)]
    ops = []
    for name, spec in items:
        if spec is None:
            continue
        if not isinstance(spec, AugmentOp):
            if not (isinstance(spec, Mapping) or hasattr(spec, "items")) or "_target_" not in spec:
                raise ConfigError(
                    f"augment.{name} is not an op config; give a mapping with _target_ (see conf/augment/) "
                    f"or null to disable it"
                )
            spec = _instantiate(name, spec)
        if not isinstance(spec, AugmentOp) or spec.stage not in STAGES:
            raise ConfigError(
                f"augment.{name} built a {type(spec).__name__}, not a cifarbench.data.augment op; "
                f"point its _target_ at a class in cifarbench.data.augment"
            )
        ops.append(spec)
    return ops


def _instantiate(name: str, spec: Any) -> Any:
    from hydra.errors import InstantiationException  # only configs need Hydra
    from hydra.utils import instantiate

    try:
        return instantiate(spec)
    except InstantiationException as error:
        # Hydra wraps whatever the constructor raised; an op's own ConfigError already names the fix.
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise ConfigError(f"augment.{name} could not be built: {error}") from None


def _staged(ops: Sequence[AugmentOp]) -> tuple[list[AugmentOp], list[AugmentOp]]:
    """uint8 ops and float ops, each in the given order: normalisation always sits between the two."""
    return [op for op in ops if op.stage == "uint8"], [op for op in ops if op.stage == "float"]


def torchvision_pipeline(ops: Sequence[AugmentOp], mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Per-sample pipeline: (PIL or uint8 CHW) -> uint8 ops -> float32 normalised -> float ops."""
    uint8_ops, float_ops = _staged(ops)
    return v2.Compose(
        [
            v2.PILToTensor(),  # passes tensors through; lets image-folder datasets hand in PIL images
            *(op.torchvision(mean, std) for op in uint8_ops),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            *(op.torchvision(mean, std) for op in float_ops),
        ]
    )


class BatchAugment:
    """Batched pipeline: uint8 (N, C, H, W) -> uint8 ops -> normalise -> float ops -> `dtype`, `channels_last`."""

    def __init__(
        self,
        ops: Sequence[AugmentOp],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.ops = list(ops)
        self.uint8_ops, self.float_ops = _staged(self.ops)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchAugment takes uint8 images, got {images.dtype}")
        for op in self.uint8_ops:
            images = op(images, generator)
        x = normalize(images, self.mean, self.std)
        for op in self.float_ops:
            x = op(x, generator)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def __repr__(self) -> str:
        return f"BatchAugment({self.ops}, dtype={self.dtype}, memory_format={self.memory_format})"


class Pipeline(NamedTuple):
    ops: list[AugmentOp]
    per_sample: v2.Compose  # for the torch DataLoader path
    batched: BatchAugment  # for the on-device path


def build_pipeline(
    augment: Mapping[str, Any] | Sequence[AugmentOp] | None,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Pipeline:
    """Both forms of the `augment` node's pipeline, with the same op order."""
    ops = build_ops(augment)
    return Pipeline(
        ops,
        torchvision_pipeline(ops, mean, std),
        BatchAugment(ops, mean, std, dtype=dtype, channels_last=channels_last),
    )
