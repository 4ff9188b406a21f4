"""Cross-entropy, the loss of every classification recipe (`loss=cross_entropy`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cifarbench.losses.base import Loss


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

    def per_image(self, loss: Tensor, batch_size: int) -> Tensor:
        return loss / batch_size if self.reduction == "sum" else loss
