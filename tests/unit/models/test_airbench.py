"""experiment=airbench94: each piece against the reference implementation (the `airbench` package, 0.1.8), and a
CI-sized training run (its exact resume after SIGKILL is in e2e/test_resume.py).

The reference's network builder and training loop move everything to CUDA; these tests call its CPU-safe helpers
(whitening, lookahead, inference with TTA) directly, build its network with `.cuda()` made a no-op, and recompute its
learning-rate "triangle", a closure inside its `train`, from the published formula.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cifarbench.callbacks.lookahead import Lookahead
from cifarbench.callbacks.tta import predict_with_tta
from cifarbench.models.airbench import Airbench94
from cifarbench.optim.schedules import piecewise_linear
from tests.helpers.config import airbench_recipe, compose_config
from tests.helpers.data import write_cifar10

airbench_utils = pytest.importorskip("airbench.utils", reason="pip install airbench==0.1.8 (a dev dependency)")


def normalised_images(count: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Correlated channels and neighbouring pixels, as in real images, so the covariance is far from the identity.
    base = torch.rand(count, 1, 33, 33, generator=generator)
    smooth = (base[..., 1:, 1:] + base[..., :-1, :-1]) / 2
    colour = torch.rand(count, 3, 1, 1, generator=generator)
    return (smooth * (0.5 + colour) + 0.1 * torch.randn(count, 3, 32, 32, generator=generator) - 0.5) / 0.25


def test_whitening_filters_equal_the_reference():
    images = normalised_images()
    ours = Airbench94()
    ours.init_from_data(images)
    reference = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    airbench_utils.init_whitening_conv(reference, images, eps=5e-4)
    torch.testing.assert_close(ours.whiten.weight, reference.weight, rtol=0, atol=0)


def test_whitened_patches_have_identity_covariance():
    images = normalised_images(256)
    model = Airbench94()
    model.init_from_data(images)
    with torch.no_grad():
        out = nn.functional.conv2d(images, model.whiten.weight[:12])  # the positive half of the filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    # eps = 5e-4 shrinks only directions of variance comparable to it; these patches have none that small.
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.02, rtol=0)


def test_lookahead_update_and_decay_schedule_equal_the_reference():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    ours_net, reference_net = net, copy.deepcopy(net)
    lookahead = Lookahead()
    lookahead.total_steps = 476
    lookahead.average = {k: v.detach().clone() for k, v in ours_net.state_dict().items()}
    reference = airbench_utils.LookaheadState(reference_net)
    published = 0.95**5 * (torch.arange(477) / 476) ** 3  # the reference's alpha_schedule
    for step in (5, 10, 240, 475, 476):
        with torch.no_grad():
            for a, b in zip(ours_net.parameters(), reference_net.parameters()):
                noise = torch.randn_like(a)
                a.add_(noise)
                b.add_(noise)
        decay = lookahead.decay(step)
        assert decay == pytest.approx(published[step].item(), rel=1e-6)
        lookahead.update(ours_net, decay)
        reference.update(reference_net, decay=decay)
        for (name, a), b in zip(ours_net.state_dict().items(), reference_net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_lr_factors_per_step_equal_the_reference_triangle():
    total = math.ceil(48 * 9.9)  # airbench: ceil(len(loader) * epochs) steps
    xp, fp = torch.tensor([0, int(0.23 * total), total]), torch.tensor([0.2, 1.0, 0.07])
    x = torch.arange(total + 1)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    index = (torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1).clamp(0, len(m) - 1)
    triangle = m[index] * x + b[index]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = piecewise_linear(optimizer, steps_per_epoch=48, epochs=9.9, knots=[[0, 0.2], [0.23, 1.0], [1, 0.07]])
    ours = torch.tensor([schedule.lr_lambdas[0](step) for step in range(total + 1)])
    torch.testing.assert_close(ours, triangle.double(), rtol=1e-6, atol=1e-7, check_dtype=False)


def test_tta_logits_equal_the_reference_level_2():
    torch.manual_seed(0)
    model = Airbench94().eval()
    images = torch.randn(8, 3, 32, 32)

    class Loader:  # what infer() reads: images and a normalisation
        def __init__(self, images):
            self.images = images

        def normalize(self, images):
            return images

    reference = airbench_utils.infer(model, Loader(images), tta_level=2)
    ours = predict_with_tta(model, images, "flip_translate")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_the_network_has_the_reference_parameters(monkeypatch):
    import airbench

    monkeypatch.setattr(nn.Module, "cuda", lambda self, *args, **kwargs: self)
    reference = airbench.make_net94()
    ours = compose_config(["experiment=airbench94"])
    model = Airbench94(widths=list(ours.model.widths))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 1972792
    shapes = sorted(tuple(p.shape) for p in reference.parameters())
    assert sorted(tuple(p.shape) for p in model.parameters()) == shapes
    trainable = sorted(tuple(p.shape) for p in reference.parameters() if p.requires_grad)
    assert sorted(tuple(p.shape) for p in model.parameters() if p.requires_grad) == trainable


# ----------------------------------------------------------------------------------------- runs (CPU)
@pytest.mark.slow
def test_the_recipe_trains_and_the_loss_falls(tmp_path):
    from cifarbench.engine.trainer import Trainer

    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    trainer = Trainer(compose_config(airbench_recipe(root) + ["trainer.epochs=4"]), tmp_path / "run", {})
    assert trainer.optimizer.param_groups[0]["name"] == "whitening_bias"
    result = trainer.fit()
    losses = [h["train/loss"] for h in result["history"]]
    assert losses[-1] < losses[0] * 0.8 and losses[0] < 3, losses  # logged per image, though the loss is summed
    assert trainer.state.global_step == 12 and len(result["history"]) == 4
    assert not trainer.model.whiten.bias.requires_grad  # frozen after its 3 epochs
    assert [h.get("test/acc") is not None for h in result["history"]] == [False, False, False, True]
