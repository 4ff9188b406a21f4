"""Geometric ops: random crop and flip (ops of their own), and the affine warps the policy ops use."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from cifarbench.data.augment.base import (
    AugmentOp,
    _arange,
    _gather_pixels,
    _outer_and,
    _pixel_centres,
    _rand,
    _randint,
    _select,
)
from cifarbench.errors import ConfigError

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



class AlternatingFlip(AugmentOp):
    """airbench's "alternating flip" (Jordan 2024): each image gets a random flip in the first epoch; in every later
    epoch it is the mirror of that flip when the epoch number is even (2, 4, ...) and the same flip when odd, so every
    pair of consecutive epochs shows each image both ways. The first-epoch flip is a hash of (seed, image index), so
    any epoch's flips follow from (seed, index, epoch) alone and a resume is exact. The on-device loader only: the
    per-sample DataLoader does not know which image or epoch it is serving."""

    uses_position = True

    def torchvision(self, mean, std):
        from cifarbench.errors import ConfigError

        raise ConfigError("augment: the alternating flip needs dataset.loader=device (it depends on image and epoch)")

    @staticmethod
    def first_epoch_flips(index: Tensor, seed: int) -> Tensor:
        """A fair coin per image, from integer mixing of (index, seed): no generator, no host read."""
        x = (index.to(torch.int64) + 1_000_003 * (int(seed) + 1)) * 2_654_435_761
        x = x ^ (x >> 15)
        x = x * 2_246_822_519
        return ((x ^ (x >> 13)) & 1).bool()

    def __call__(self, images, generator, *, index: Tensor, epoch: int, seed: int):
        flip = self.first_epoch_flips(index, seed) ^ (int(epoch) % 2 == 0)
        return _select(flip, images.flip(-1), images)


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
