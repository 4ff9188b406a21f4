"""cifarbench.models.layers: drop path and ShakeDrop."""

from __future__ import annotations

import pytest
import torch

from cifarbench.models.layers import DropPath, drop_path_rates
from cifarbench.models.pyramidnet import ShakeDrop
from cifarbench.models.resnet import cifar_resnet

# Tiny tensors: one intra-op thread is faster, and much faster on a shared, busy CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_drop_path_module():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 2, 2)
    layer = DropPath(0.5)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    # Each sample is either dropped entirely or kept and scaled by 1/(1-p).
    for sample_out, sample_in in zip(a, x):
        assert torch.equal(sample_out, torch.zeros_like(sample_in)) or torch.allclose(
            sample_out, sample_in * 2
        )


def test_drop_path_rates_rise_linearly():
    assert drop_path_rates(0.2, 4) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    model = cifar_resnet(20, drop_path=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 9 and rates == sorted(rates) and rates[-1] == pytest.approx(0.3)


def test_shakedrop():
    torch.manual_seed(0)
    layer = ShakeDrop(0.5)
    x = torch.ones(256, 1, 1, 1, requires_grad=True)
    layer.eval()
    assert torch.allclose(layer(x), x * 0.5)
    layer.train()
    out = layer(x)
    out.sum().backward()
    forward_scale, backward_scale = out.detach().flatten(), x.grad.flatten()
    assert forward_scale.min() >= -1 and forward_scale.max() <= 1
    assert backward_scale.min() >= 0 and backward_scale.max() <= 1
    kept = forward_scale == 1
    assert 0 < kept.sum() < 256  # about half the samples pass unchanged...
    assert torch.all(backward_scale[kept] == 1)  # ...and their gradient too
    assert not torch.equal(forward_scale[~kept], backward_scale[~kept])  # forward and backward draws differ
