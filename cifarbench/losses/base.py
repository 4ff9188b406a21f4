"""The interface of a training loss, chosen with the `loss` config group. A loss is called as
`loss(logits, targets, images)`: targets are class indices or soft (mixed) targets, and the images are there for
losses that need them (a teacher's view in distillation). `setup` is called once the run knows its device and
classes."""

from __future__ import annotations

import torch
from torch import Tensor


class Loss:
    def setup(self, *, device: torch.device, num_classes: int, channels_last: bool) -> None:
        """Load or move whatever the loss needs; most losses need nothing."""

    def __call__(self, logits: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        raise NotImplementedError

    def per_image(self, loss: Tensor, batch_size: int) -> Tensor:
        """What the logs show for a batch's loss: the mean over its images (a loss that sums overrides this)."""
        return loss
