"""The optimizer and scheduler configs in conf/ build what they name, with their defaults."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers.paths import REPO
from tests.helpers.schedules import _lrs, _optimizer

CONF = REPO / "conf"


@pytest.mark.parametrize("name", ["cosine", "multistep", "onecycle", "cosine_restarts", "constant"])
def test_scheduler_configs_build_partials(name):
    cfg = OmegaConf.load(CONF / "scheduler" / f"{name}.yaml")
    factory = instantiate(cfg)
    opt = _optimizer(lr=0.1)
    sched = factory(opt, steps_per_epoch=3, epochs=200)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    _lrs(opt, sched, 600)  # the whole run, no error (OneCycleLR would raise one step too far)


def test_scheduler_config_defaults():
    multistep = OmegaConf.load(CONF / "scheduler" / "multistep.yaml")
    assert list(multistep.milestones) == [60, 120, 160] and multistep.gamma == 0.2
    onecycle = OmegaConf.load(CONF / "scheduler" / "onecycle.yaml")
    # max_lr null: the peak is the optimizer's (scaled) lr; unit/optim/test_schedules.py checks the built schedule.
    assert (onecycle.max_lr, onecycle.pct_start, onecycle.anneal_strategy) == (None, 0.3, "cos")
    assert (onecycle.div_factor, onecycle.final_div_factor) == (25, 1000)
    cosine = OmegaConf.load(CONF / "scheduler" / "cosine.yaml")
    assert cosine.min_lr == 0 and cosine.warmup_epochs == 0


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
        ("adamw", torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 1e-4}),
    ],
)
def test_optimizer_configs(name, cls, expected):
    factory = instantiate(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml"))
    optimizer = factory([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    for key, value in expected.items():
        assert group[key] == value and type(group[key]) is type(value), key
