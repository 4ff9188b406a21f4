"""Tests for the per-step LR schedules in cifarbench.optim.schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cifarbench.errors import ConfigError
from cifarbench.optim import schedules as optim
from tests.helpers.runs import toy_trainer
from tests.helpers.schedules import _lrs, _optimizer


def test_cosine_warmup_and_half_way_point():
    opt = _optimizer(lr=1.0)
    sched = optim.cosine(
        opt, steps_per_epoch=10, epochs=10, warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.1
    )
    lrs = _lrs(opt, sched, 100)
    assert lrs[0] == pytest.approx(0.1)  # start of warmup: start_factor * lr
    assert lrs[10] == pytest.approx(0.1 + 0.9 * 10 / 20)  # linear in between
    assert lrs[20] == pytest.approx(1.0)  # end of warmup: the full LR, cosine starts here
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine part
    assert lrs[99] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))


def test_cosine_fractional_warmup_and_no_warmup():
    opt = _optimizer(lr=0.5)
    sched = optim.cosine(opt, steps_per_epoch=4, epochs=3, warmup_epochs=0.5, warmup_start_factor=0.0)
    lrs = _lrs(opt, sched, 12)
    assert lrs[:3] == pytest.approx([0.0, 0.25, 0.5])  # 0.5 epoch = 2 steps
    opt = _optimizer(lr=0.5)
    lrs = _lrs(opt, optim.cosine(opt, steps_per_epoch=4, epochs=3), 12)
    assert lrs[0] == 0.5 and lrs[6] == pytest.approx(0.25)


def test_cosine_min_lr_is_absolute_for_every_param_group():
    opt = _optimizer(lr=1.0, groups=2)  # group LRs 1.0 and 2.0
    sched = optim.cosine(opt, steps_per_epoch=5, epochs=4, min_lr=0.2)
    _lrs(opt, sched, 20)
    # One step past the end the cosine reaches exactly min_lr in both groups.
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.2])


def test_multistep_milestones_in_epochs_map_to_steps():
    opt = _optimizer(lr=1.0)
    sched = optim.multistep(opt, steps_per_epoch=7, epochs=8, milestones=[2, 5], gamma=0.2)
    lrs = _lrs(opt, sched, 56)
    assert lrs[13] == pytest.approx(1.0)  # last step of epoch 2
    assert lrs[14] == pytest.approx(0.2)  # first step of epoch 3
    assert lrs[34] == pytest.approx(0.2)
    assert lrs[35] == pytest.approx(0.04)
    assert lrs[55] == pytest.approx(0.04)


def test_multistep_with_warmup_and_bad_milestones():
    opt = _optimizer(lr=1.0)
    sched = optim.multistep(
        opt, steps_per_epoch=10, epochs=5, milestones=[3], gamma=0.5, warmup_epochs=1, warmup_start_factor=0.0
    )
    lrs = _lrs(opt, sched, 50)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[29] == pytest.approx(1.0) and lrs[30] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="milestones"):
        optim.multistep(_optimizer(), steps_per_epoch=10, epochs=5, milestones=[3, 2])


def test_onecycle_peaks_at_pct_start():
    opt = _optimizer(lr=1.0)
    sched = optim.onecycle(
        opt, steps_per_epoch=10, epochs=10, max_lr=0.01, pct_start=0.3, div_factor=25, final_div_factor=1000
    )
    lrs = _lrs(opt, sched, 100)
    assert lrs[0] == pytest.approx(0.01 / 25)
    peak = max(range(100), key=lrs.__getitem__)
    assert peak == 29 and lrs[29] == pytest.approx(0.01)  # torch: the peak is step pct_start * total - 1
    assert lrs[99] == pytest.approx(0.01 / 25 / 1000)
    with pytest.raises(ValueError):  # OneCycleLR refuses to run past its length
        opt.step()
        sched.step()


def test_onecycle_warmup_epochs_set_pct_start_and_start_factor():
    opt = _optimizer(lr=0.02)
    sched = optim.onecycle(opt, steps_per_epoch=10, epochs=10, warmup_epochs=2, warmup_start_factor=0.1)
    lrs = _lrs(opt, sched, 100)  # max_lr=None: the optimizer's LR is the peak
    assert lrs[0] == pytest.approx(0.002)
    assert max(range(100), key=lrs.__getitem__) == 19 and lrs[19] == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="pct_start"):
        optim.onecycle(_optimizer(), steps_per_epoch=10, epochs=10, pct_start=1.0)


def test_cosine_restarts_restart_at_t0_and_grow():
    opt = _optimizer(lr=1.0)
    sched = optim.cosine_restarts(opt, steps_per_epoch=4, epochs=14, t0_epochs=2, t_mult=2, min_lr=0.1)
    lrs = _lrs(opt, sched, 56)
    # Cycles of 8, 16 and 32 steps start at steps 0, 8 and 24.
    for start in (0, 8, 24):
        assert lrs[start] == pytest.approx(1.0)
        assert lrs[start - 1] < 0.2 if start else True
    assert lrs[4] == pytest.approx(0.55)  # half-way through the first cycle
    assert lrs[8 + 8] == pytest.approx(0.55)  # half-way through the second
    assert lrs[24 + 16] == pytest.approx(0.55)


def test_cosine_restarts_constant_period_with_warmup():
    opt = _optimizer(lr=1.0)
    sched = optim.cosine_restarts(
        opt, steps_per_epoch=2, epochs=10, t0_epochs=3, warmup_epochs=1, warmup_start_factor=0.5
    )
    lrs = _lrs(opt, sched, 20)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(0.75)
    assert [lrs[s] for s in (2, 8, 14)] == pytest.approx([1.0, 1.0, 1.0])  # every 6 steps after the warmup
    assert lrs[5] == pytest.approx(0.5)


def test_constant_schedule_with_warmup():
    opt = _optimizer(lr=0.4)
    lrs = _lrs(
        opt, optim.constant(opt, steps_per_epoch=4, epochs=2, warmup_epochs=1, warmup_start_factor=0.0), 8
    )
    assert lrs == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])


def _trace(optimizer, scheduler, steps: int) -> list[tuple]:
    """(lr, momentum) of every param group at each of the next ``steps`` steps."""
    seen = []
    for _ in range(steps):
        seen.append(tuple((g["lr"], g["momentum"]) for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    return seen


FACTORIES = {
    "cosine": lambda opt: optim.cosine(opt, steps_per_epoch=5, epochs=12, warmup_epochs=1.4, min_lr=0.01),
    "multistep": lambda opt: optim.multistep(opt, steps_per_epoch=5, epochs=12, milestones=[3, 6], gamma=0.3),
    "onecycle": lambda opt: optim.onecycle(opt, steps_per_epoch=5, epochs=12, max_lr=0.5),
    "cosine_restarts": lambda opt: optim.cosine_restarts(
        opt, steps_per_epoch=5, epochs=12, t0_epochs=2, t_mult=2
    ),
    "constant": lambda opt: optim.constant(opt, steps_per_epoch=5, epochs=12, warmup_epochs=2),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_continues_identically(name, tmp_path):
    make = FACTORIES[name]
    opt = _optimizer(lr=0.3, groups=2)
    sched = make(opt)
    _lrs(opt, sched, 17)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "last.pt")
    reference = _trace(opt, sched, 40)

    state = torch.load(tmp_path / "last.pt", weights_only=True)  # checkpoint-safe contents
    opt2 = _optimizer(lr=0.3, groups=2)
    sched2 = make(opt2)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    resumed = _trace(opt2, sched2, 40)
    assert resumed == reference


def test_run_length_validation():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        optim.cosine(_optimizer(), steps_per_epoch=10, epochs=5, warmup_epochs=6)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        optim.cosine(_optimizer(), steps_per_epoch=0, epochs=5)
    with pytest.raises(ConfigError, match="t0_epochs"):
        optim.cosine_restarts(_optimizer(), steps_per_epoch=10, epochs=5, t0_epochs=0)


# --------------------------------------------------------------------------------------------------- schedules
def test_onecycle_peaks_at_the_optimizers_scaled_lr(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", [
        "scheduler=onecycle", "optimizer.lr=0.05", "trainer.lr_scaling=linear", "trainer.lr_base_batch=8",
    ])
    assert trainer.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.05 * 16 / 8)
    explicit = toy_trainer(toy_conf, tmp_path / "explicit", ["scheduler=onecycle", "scheduler.max_lr=0.3"])
    assert explicit.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.3)
