"""Training losses, chosen with the `loss` config group. A loss is called as `loss(logits, targets, images)`:
targets are class indices or soft (mixed) targets, and the images are there for losses that need them (a
teacher's view in distillation). `setup` is called once the run knows its device and classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Loss:
    def setup(self, *, device: torch.device, num_classes: int, channels_last: bool) -> None:
        """Load or move whatever the loss needs; most losses need nothing."""

    def __call__(self, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        raise NotImplementedError


class CrossEntropy(Loss):
    """Cross-entropy in float32 (also under autocast), with optional label smoothing; soft targets work too.

    reduction="sum" adds the per-image losses instead of averaging them (airbench's recipes do this: the gradient,
    and so the effective lr, then scale with the batch size). Logs always show the per-image mean."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        from cifarbench.errors import ConfigError

        if reduction not in ("mean", "sum"):
            raise ConfigError(f"loss.reduction={reduction!r} is not supported; use mean or sum")
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def __call__(self, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing,
                               reduction=self.reduction)
