"""Model size and cost, as reported in metrics.json and the model table."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def forward_gflops(model: torch.nn.Module, input_shape: tuple[int, ...], device="cpu") -> float:
    """FLOPs of one forward pass of one image (a multiply-add counts 2), in units of 1e9.

    Papers often quote multiply-adds as "FLOPs"; divide by 2 to compare with those.
    """
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
