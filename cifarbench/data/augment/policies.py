"""The AutoAugment family: the policy-op space, its magnitudes, and AutoAugment, RandAugment and
TrivialAugmentWide, grouped by op so each op runs once per batch."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cifarbench.data.augment.base import AugmentOp, _arange, _constant, _rand, _randint
from cifarbench.data.augment.colour import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    autocontrast,
    posterize,
    solarize,
)
from cifarbench.data.augment.geometry import rotate, shear_x, shear_y, translate_x, translate_y
from cifarbench.errors import ConfigError

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
