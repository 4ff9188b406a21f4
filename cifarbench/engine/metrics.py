"""Evaluation of a model over a loader, with every sum kept on the device until the end."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cifarbench.device import autocast


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    num_classes: int,
    device: torch.device,
    precision: str = "32",
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Loss, top-1, top-5 and the confusion matrix (rows: true class, columns: predicted).

    `predict(model, images)` returns logits; it is where test-time augmentation plugs in.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)  # every device has float32 (MPS lacks float64)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        with autocast(device, precision):
            logits = predict(model, images) if predict is not None else model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        top5 += topk_correct(logits, labels, 5)
        confusion += torch.bincount(labels * num_classes + logits.argmax(dim=1), minlength=num_classes**2)
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(confusion.sum())
    per_class_total = confusion.sum(dim=1)
    return {
        "loss": float(loss_sum) / max(count, 1),
        "acc": int(confusion.diagonal().sum()) / max(count, 1),
        "top5": int(top5) / max(count, 1),
        "count": count,
        "confusion": confusion,
        "per_class_acc": (confusion.diagonal() / per_class_total.clamp_min(1)).tolist(),
    }
