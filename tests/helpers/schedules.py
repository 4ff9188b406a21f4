"""An optimizer to schedule, and the learning rates a schedule gives step by step."""

from __future__ import annotations

import torch


def _optimizer(lr: float = 1.0, groups: int = 1, momentum: float = 0.9) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _lrs(optimizer, scheduler, steps: int, group: int = 0) -> list[float]:
    """The LR each of the next ``steps`` optimizer steps runs with, stepping as the trainer does."""
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        scheduler.step()
    return seen
