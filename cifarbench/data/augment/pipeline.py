"""From the Hydra `augment` node to the two pipelines: torchvision transforms for the per-sample DataLoader and
the batched BatchAugment for the on-device loader (uint8 ops, then normalisation, then float ops)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cifarbench.data.augment.base import STAGES, AugmentOp, _constant
from cifarbench.errors import ConfigError

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


def torchvision_pipeline(ops: Sequence[AugmentOp], mean: Sequence[float], std: Sequence[float],
                         resize: Resize | None = None) -> v2.Compose:
    """Per-sample pipeline: (PIL or uint8 CHW) -> uint8 ops -> float32 normalised -> float ops -> resize."""
    uint8_ops, float_ops = _staged(ops)
    return v2.Compose(
        [
            v2.PILToTensor(),  # passes tensors through; lets image-folder datasets hand in PIL images
            *(op.torchvision(mean, std) for op in uint8_ops),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            *(op.torchvision(mean, std) for op in float_ops),
            *([resize.torchvision()] if resize is not None else []),
        ]
    )


class Resize:
    """The model's input size (a pretrained model's, cifarbench.models.timm_adapter.input_spec): each batch of
    normalised images is interpolated to size x size where it is, so only one batch is ever held upsampled. The
    per-sample path resizes each image the same way (torchvision's Resize on the float tensor)."""

    def __init__(self, size: int, interpolation: str = "bilinear"):
        if interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"resize interpolation {interpolation!r} is not supported; use bilinear or bicubic")
        self.size, self.interpolation = int(size), interpolation

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return torch.nn.functional.interpolate(x, size=(self.size, self.size), mode=self.interpolation,
                                               align_corners=False)

    def torchvision(self) -> v2.Resize:
        mode = v2.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
        return v2.Resize((self.size, self.size), interpolation=mode, antialias=False)

    def __repr__(self) -> str:
        return f"Resize({self.size}, {self.interpolation})"


class BatchAugment:
    """Batched pipeline: uint8 (N, C, H, W) -> uint8 ops -> normalise -> float ops -> resize -> `dtype`,
    `channels_last`."""

    def __init__(
        self,
        ops: Sequence[AugmentOp],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        resize: Resize | None = None,
    ):
        self.ops = list(ops)
        self.resize = resize
        self.uint8_ops, self.float_ops = _staged(self.ops)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: Tensor, generator: torch.Generator | None, position: dict | None = None) -> Tensor:
        """`position` (index=, epoch=, seed=) reaches the ops that use it; the on-device loader supplies it."""
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchAugment takes uint8 images, got {images.dtype}")
        for op in self.uint8_ops:
            images = op(images, generator, **position) if op.uses_position else op(images, generator)
        x = normalize(images, self.mean, self.std)
        for op in self.float_ops:
            x = op(x, generator, **position) if op.uses_position else op(x, generator)
        if self.resize is not None:
            x = self.resize(x)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def __repr__(self) -> str:
        return (f"BatchAugment({self.ops}, dtype={self.dtype}, memory_format={self.memory_format}"
                f"{f', {self.resize}' if self.resize is not None else ''})")


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
