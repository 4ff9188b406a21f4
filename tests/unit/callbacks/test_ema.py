"""The EMA callback: its update rule, its state and a run that evaluates it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifarbench.callbacks.ema import ModelEma
from cifarbench.checkpoint import load_checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.runs import train_in_process
from tests.helpers.tensors import _gen, _Scalar


def test_ema_is_evaluated_beside_the_raw_weights_and_selects_best(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(
        tiny_cifar_overrides(cifar_root) + ["trainer.epochs=2", "+callbacks=ema", "callbacks.ema.decay=0.9"],
        run_dir,
    )
    assert result["monitor"] == "test_ema/acc"
    assert all({"test/acc", "test_ema/acc"} <= set(h) for h in result["history"])
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["metrics"]["test_ema/acc"] == max(h["test_ema/acc"] for h in result["history"])
    # best.pt holds the EMA weights: evaluating it gives the EMA accuracy of that epoch.
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    assert evaluated["acc"] == best["metrics"]["test_ema/acc"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["callbacks"]["ema"]["num_updates"] == last["state"]["global_step"]
    classifier = [k for k in last["model"] if k.endswith("fc.weight")][0]
    assert not torch.equal(last["callbacks"]["ema"]["module"][classifier], last["model"][classifier])


def test_ema_matches_geometric_series_without_warmup():
    decay, e0 = 0.9, 1.0
    model = _Scalar(e0)
    ema = ModelEma(model, decay=decay, warmup=False)
    xs = [2.0, -1.0, 0.5, 3.0, 4.0]
    for x in xs:
        model.w.data.fill_(x)
        ema.update(model)
    n = len(xs)
    # e_n = d^n e_0 + (1 - d) * sum_k d^(n - k) x_k, k = 1..n
    expected = decay**n * e0 + (1 - decay) * sum(decay ** (n - k) * x for k, x in enumerate(xs, start=1))
    assert ema.module.w.item() == pytest.approx(expected, rel=1e-12)
    assert ema.num_updates == n


def test_ema_warmup_closed_form():
    decay, e0, c = 0.95, 0.0, 1.0
    model = _Scalar(e0)
    ema = ModelEma(model, decay=decay, warmup=True)
    model.w.data.fill_(c)
    for _ in range(40):
        ema.update(model)
    # With a constant target c: e_n = c + (e_0 - c) * prod_t d_t, d_t = min(decay, (1 + t) / (10 + t)).
    product = math.prod(min(decay, (1 + t) / (10 + t)) for t in range(40))
    assert ema.module.w.item() == pytest.approx(c + (e0 - c) * product, rel=1e-12)
    assert ema.current_decay() == pytest.approx(41 / 50)  # still warming up: (1 + 40) / (10 + 40) < 0.95
    ema.num_updates = 1000
    assert ema.current_decay() == decay  # capped once (1 + t) / (10 + t) passes the decay


def test_ema_update_every_skips_steps():
    model = _Scalar(0.0)
    ema = ModelEma(model, decay=0.5, warmup=False, update_every=3)
    model.w.data.fill_(1.0)
    done = [ema.update(model, step) for step in range(1, 10)]
    assert done == [False, False, True] * 3
    assert ema.num_updates == 3
    assert ema.module.w.item() == pytest.approx(1 - 0.5**3)


def test_ema_module_is_frozen_eval_copy_and_buffers_follow():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.5, warmup=False)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight is not model[0].weight
    model.train()
    model(torch.randn(16, 3, generator=_gen()))  # moves BN running stats
    ema.update(model)
    bn, ema_bn = model[1], ema.module[1]
    assert torch.allclose(ema_bn.running_mean, 0.5 * bn.running_mean)  # averaged from the initial zeros
    assert ema_bn.num_batches_tracked.item() == 1  # integer buffer copied


def test_ema_state_dict_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.999, warmup=True)
    for _ in range(5):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    resumed = ModelEma(model, decay=0.999, warmup=True)
    resumed.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert resumed.num_updates == 5
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
        resumed.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
