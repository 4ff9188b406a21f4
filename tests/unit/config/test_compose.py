"""Every config option composes, resolves and points its _target_ at something importable."""

from __future__ import annotations

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from cifarbench.config import config_dir
from tests.helpers.config import compose_config
from tests.helpers.config_options import CONF, GROUPS, options


def targets(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for value in node.values():
            found += targets(value)
    elif isinstance(node, list):
        for value in node:
            found += targets(value)
    return found


def test_defaults_are_the_seed_recipe():
    cfg = compose_config()
    assert (cfg.model._target_, cfg.model.depth) == ("cifarbench.models.resnet.resnet", 18)
    assert cfg.dataset.name == "cifar10"
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.nesterov, cfg.optimizer.weight_decay) == (
        0.1, 0.9, True, 5e-4)
    assert cfg.trainer.batch_size == 128 and cfg.trainer.epochs == 200
    assert cfg.scheduler._target_ == "cifarbench.optim.schedules.cosine"
    assert list(cfg.augment) == ["crop", "flip"] and cfg.augment.crop.padding == 4
    assert cfg.dataset.source.download is True
    assert cfg.model.num_classes == 10 and cfg.model.in_channels == 3


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_resolves(group):
    names = options(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        extra = ["dataset.num_classes=3", "dataset.source.root=/images"] if name == "imagefolder" else []
        cfg = compose_config([f"{group}={name}"] + extra)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for target in targets(resolved):
            assert callable(get_method(target)), f"{group}={name}: {target} is not importable"


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_model_takes_its_classes_and_channels_from_the_dataset(dataset):
    extra = ["dataset.num_classes=3", "dataset.source.root=/images"] if dataset == "imagefolder" else []
    for model in options("model"):
        cfg = compose_config([f"model={model}", f"dataset={dataset}"] + extra)
        assert cfg.model.num_classes == cfg.dataset.num_classes
        assert cfg.model.in_channels == cfg.dataset.in_channels


def test_augment_options_combine_in_the_order_given():
    cfg = compose_config(["augment=[standard,autoaugment,cutout]"])
    assert list(cfg.augment) == ["crop", "flip", "autoaugment", "cutout"]


def test_experiments_are_global_packages_that_name_their_source():
    for name in options("experiment"):
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert "# @package _global_" in text, name
        header = text.split("defaults")[0]
        # A figure, or a plain statement that there is none to quote (seed_part4: the series publishes none).
        quotes = "%" in header or "error" in header.lower() or "no figure" in header.lower()
        assert quotes, f"experiment {name} lacks its reported accuracy"


def test_run_and_sweep_directories_and_no_chdir():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        hydra_cfg = compose(config_name="train", return_hydra_config=True).hydra
    assert hydra_cfg.job.chdir is False
    assert "${now:%Y-%m-%d}/${now:%H-%M-%S}" in OmegaConf.to_container(hydra_cfg.run)["dir"]
    assert "multirun" in OmegaConf.to_container(hydra_cfg.sweep)["dir"]
    assert "override_dirname" in OmegaConf.to_container(hydra_cfg.sweep)["subdir"]


def test_warmup_epochs_works_with_onecycle_too():
    import torch
    from hydra.utils import instantiate

    cfg = compose_config(["scheduler=onecycle", "scheduler.warmup_epochs=2", "scheduler.warmup_start_factor=0.1"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = instantiate(cfg.scheduler)(optimizer, steps_per_epoch=10, epochs=8)
    lrs = []
    for _ in range(80):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.04) and max(lrs) == pytest.approx(0.4, rel=1e-3)
    assert lrs.index(max(lrs)) == 19  # the peak after 2 of 8 epochs


def test_per_dataset_gives_a_listed_dataset_its_value_and_every_other_the_default():
    from cifarbench.config.resolvers import per_dataset
    from cifarbench.errors import ConfigError

    values = {"cifar10": 0.1, "cifar100": 0.5, "default": 0.25}
    assert [per_dataset(name, values) for name in ("cifar10", "cifar100", "fashion_mnist")] == [0.1, 0.5, 0.25]
    assert per_dataset("svhn", {"cifar10": 0.1, "default": 0.3}) == 0.3
    recipe = "${per_dataset:${dataset.name},{cifar10: 0.1, default: 0.3}}"
    assert OmegaConf.create({"dataset": {"name": "svhn"}, "lr": recipe}).lr == 0.3  # the resolver a config uses
    with pytest.raises(ConfigError, match="not for dataset=svhn"):
        per_dataset("svhn", {"cifar10": 0.1})
