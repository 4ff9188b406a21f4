"""Augmentation ops, each in two forms that share one set of semantics.

Modules: `base` (the op interface and shared helpers), `geometry` (crop, flip, warps), `colour` (uint8 kernels,
ColorJitter), `policies` (AutoAugment, RandAugment, TrivialAugmentWide), `erasing` (Cutout, RandomErasing) and
`pipeline` (config -> ops -> pipelines). Everything public is importable from `cifarbench.data.augment`.

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
tests/unit/data/augment/test_host_waits.py checks both with a dispatch-mode counter (HostTraffic).

CPU speed: torch.where, trunc_, bool ops that broadcast and float -> uint8 casts are not vectorised on the CPU
(3-25x slower than arithmetic), so the kernels use exact equivalents (`_select`, `_trunc`, `_outer_and`,
`_to_uint8`, 0/1 products, lerps with 0/1 weights), which give the same bits for finite values.

`build_pipeline(augment, mean, std)` turns the Hydra `augment` node (name -> op config, applied in key order) into
both pipelines: uint8 ops, then normalisation, then float ops.
"""


from __future__ import annotations

from cifarbench.data.augment.base import STAGES, AugmentOp
from cifarbench.data.augment.colour import (
    ColorJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    adjust_sharpness,
    autocontrast,
    posterize,
    solarize,
)
from cifarbench.data.augment.erasing import Cutout, RandomErasing
from cifarbench.data.augment.geometry import (
    AlternatingFlip,
    HorizontalFlip,
    RandomCrop,
    rotate,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)
from cifarbench.data.augment.pipeline import (
    BatchAugment,
    Pipeline,
    Resize,
    build_ops,
    build_pipeline,
    normalize,
    torchvision_pipeline,
)
from cifarbench.data.augment.policies import (
    CIFAR10_POLICY,
    POLICY_OPS,
    RAND_AUGMENT_OPS,
    SIGNED_OPS,
    AutoAugment,
    OpDraw,
    RandAugment,
    TrivialAugmentWide,
    apply_steps,
    magnitude_bins,
)

__all__ = [
    'STAGES', 'AugmentOp', 'RandomCrop', 'HorizontalFlip', 'AlternatingFlip', 'shear_x', 'shear_y', 'translate_x',
    'translate_y',
    'rotate', 'adjust_brightness', 'adjust_saturation', 'adjust_contrast', 'adjust_sharpness', 'posterize',
    'solarize', 'autocontrast', 'adjust_hue', 'ColorJitter', 'POLICY_OPS', 'SIGNED_OPS', 'RAND_AUGMENT_OPS',
    'magnitude_bins', 'OpDraw', 'apply_steps', 'CIFAR10_POLICY', 'AutoAugment', 'RandAugment', 'TrivialAugmentWide',
    'Cutout', 'RandomErasing', 'normalize', 'build_ops', 'torchvision_pipeline', 'BatchAugment', 'Pipeline',
    'build_pipeline', 'Resize',
]
