"""Mixup and CutMix on a whole batch, on the batch's own device.

The trainer applies a :class:`BatchMixer` after the per-sample transforms and normalisation, then trains on the
returned soft targets with ``torch.nn.functional.cross_entropy(logits, soft_targets, label_smoothing=ls)``: torch
accepts class-probability targets and smooths them the same way as class indices, ``(1 - ls) * target + ls / C``
(tests/unit/data/test_mixing.py checks this against a hand-written formula).

One mixing coefficient ``lam`` is drawn per batch (as in the Mixup and CutMix papers and timm's default
``mode="batch"``). Each image is mixed with its partner in the reversed batch (``images.flip(0)``): the loader has
already shuffled the batch, so reversing pairs random images without another permutation draw.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from cifarbench.errors import ConfigError


def _python_rng(generator: torch.Generator | None) -> random.Random:
    """A stdlib RNG seeded by one draw from ``generator``.

    torch's Beta sampler cannot take a generator, so the few scalar draws per batch (apply?, which op, lam, box
    centre) come from a Random seeded from the torch generator: reproducible given the generator, and advancing it
    exactly once per batch. The draw is made on the generator's device, so a CUDA generator costs one tiny sync;
    pass a CPU generator to avoid it.
    """
    device = generator.device if generator is not None else "cpu"
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=device).item()
    return random.Random(seed)


def one_hot_mixture(labels: Tensor, partner_labels: Tensor, lam: float, num_classes: int) -> Tensor:
    """``lam * onehot(labels) + (1 - lam) * onehot(partner_labels)`` as float32; every row sums to 1."""
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    # index_add-style accumulation (not assignment) so an image paired with its own class gets weight 1, not lam.
    targets.scatter_add_(1, labels[:, None], torch.full_like(targets[:, :1], lam))
    targets.scatter_add_(1, partner_labels[:, None], torch.full_like(targets[:, :1], 1.0 - lam))
    return targets


def cutmix_box(height: int, width: int, lam: float, rng: random.Random) -> tuple[int, int, int, int]:
    """A box ``(top, bottom, left, right)`` covering about ``1 - lam`` of the image, clipped to the image.

    The box has side ratios ``sqrt(1 - lam)`` and a uniformly drawn centre, as in the CutMix paper; clipping at
    the border makes it smaller, which is why the caller recomputes lam from the actual area.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randrange(height), rng.randrange(width)
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


class BatchMixer:
    """Mixup / CutMix for a batch: ``mixer(images, labels, generator) -> (images, soft_targets)``.

    Args:
        num_classes: width of the soft targets.
        mixup_alpha: Beta(alpha, alpha) parameter for Mixup; 0 disables Mixup.
        cutmix_alpha: Beta(alpha, alpha) parameter for CutMix; 0 disables CutMix.
        switch_prob: when both alphas are > 0, the probability that a batch uses CutMix instead of Mixup.
        prob: probability that a batch is mixed at all; an unmixed batch gets plain one-hot targets.

    Images must be floating point (normalised) for Mixup; CutMix only copies pixels. Inputs are not modified.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
    ) -> None:
        if num_classes < 1:
            raise ConfigError(f"mixing: num_classes must be >= 1, got {num_classes}")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ConfigError(f"mixing: {name} must be >= 0 (0 disables it), got {value}")
        for name, value in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"mixing: {name} must be in [0, 1], got {value}")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)

    @property
    def enabled(self) -> bool:
        """False when both alphas are 0: the trainer can then skip mixing and keep integer labels."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _choose_cutmix(self, rng: random.Random) -> bool:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return rng.random() < self.switch_prob
        return self.cutmix_alpha > 0

    def __call__(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mix ``images`` (N, C, H, W) with the reversed batch; return them with (N, num_classes) soft targets."""
        partner_labels = labels.flip(0)
        if not self.enabled:  # no draw at all, so a disabled mixer never costs a device sync
            return images, one_hot_mixture(labels, partner_labels, 1.0, self.num_classes)
        rng = _python_rng(generator)
        if rng.random() >= self.prob:
            return images, one_hot_mixture(labels, partner_labels, 1.0, self.num_classes)

        if self._choose_cutmix(rng):
            lam = rng.betavariate(self.cutmix_alpha, self.cutmix_alpha)
            height, width = images.shape[-2:]
            top, bottom, left, right = cutmix_box(height, width, lam, rng)
            mixed = images.clone()
            mixed[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
            # lam becomes the fraction of pixels that still come from the image itself.
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            if not images.is_floating_point():
                raise ConfigError(
                    "mixing: Mixup needs float (normalised) images; apply it after normalisation"
                )
            lam = rng.betavariate(self.mixup_alpha, self.mixup_alpha)
            # lerp(a, b, w) = a + w * (b - a) = lam * a + (1 - lam) * b with w = 1 - lam.
            mixed = torch.lerp(images, images.flip(0), 1.0 - lam)
        return mixed, one_hot_mixture(labels, partner_labels, lam, self.num_classes)

    def __repr__(self) -> str:
        return (
            f"BatchMixer(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, prob={self.prob})"
        )


def mixed_accuracy_counts(logits: Tensor, targets: Tensor) -> Tensor:
    """Number of correct predictions (0-dim int64 tensor, no host sync) under mixed targets.

    A prediction counts as correct when it equals the argmax of the soft target, i.e. the class with the larger
    mixing weight (the choice timm's training scripts make). This keeps the reported training accuracy honest:
    a mixed image has one right answer, the dominant class, instead of crediting either of the two. For
    ``lam == 0.5`` the tie goes to ``argmax``'s pick. Integer (N,) targets are accepted too, so the trainer can use
    this one function with and without mixing.
    """
    hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
    return (logits.argmax(dim=1) == hard).sum()
