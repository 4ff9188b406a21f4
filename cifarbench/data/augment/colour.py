"""Colour ops on uint8 images: the per-sample kernels the policy ops use, and ColorJitter."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms import v2

from cifarbench.data.augment.base import AugmentOp, _constant, _per_sample, _rand, _to_uint8, _trunc, _uniform
from cifarbench.errors import ConfigError

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
