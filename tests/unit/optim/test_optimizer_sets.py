"""cifarbench.optim.optimizer_sets: several optimizers stepped as one."""

from __future__ import annotations

import torch
from torch import nn


def test_an_optimizer_set_zeroes_and_steps_every_member():
    from cifarbench.optim.optimizer_sets import OptimizerSet

    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    optimizers = OptimizerSet({"optimizer": torch.optim.SGD([a], lr=0.5), "muon": torch.optim.SGD([b], lr=0.25)})
    for param in (a, b):
        param.grad = torch.ones_like(param)
    optimizers.step()
    assert torch.equal(a.detach(), torch.full((2,), 0.5)) and torch.equal(b.detach(), torch.full((3,), 0.75))
    optimizers.zero_grad()
    assert a.grad is None and b.grad is None
