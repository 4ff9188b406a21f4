"""Every config option composes, resolves and points its _target_ at something importable."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config
from hydra.utils import get_method
from omegaconf import OmegaConf

from cifarbench.config import config_dir

CONF = Path(config_dir())
GROUPS = ["dataset", "model", "augment", "mix", "optimizer", "scheduler", "trainer", "paths", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


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
        assert "%" in header or "error" in header.lower(), f"experiment {name} lacks its reported accuracy"


def test_run_and_sweep_directories_and_no_chdir():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        hydra_cfg = compose(config_name="train", return_hydra_config=True).hydra
    assert hydra_cfg.job.chdir is False
    assert "${now:%Y-%m-%d}/${now:%H-%M-%S}" in OmegaConf.to_container(hydra_cfg.run)["dir"]
    assert "multirun" in OmegaConf.to_container(hydra_cfg.sweep)["dir"]
    assert "override_dirname" in OmegaConf.to_container(hydra_cfg.sweep)["subdir"]


# ------------------------------------------------------------------------------------------- unknown keys
TYPOS = [  # override, the key the message names, the key it suggests
    ("+trainer.epoch=3", "trainer.epoch", "trainer.epochs"),
    ("+optimiser=sgd", "optimiser", "optimizer"),
    ("+scheduler.min_lrr=0", "scheduler.min_lrr", "scheduler.min_lr"),
    ("+dataset.val_sise=5", "dataset.val_sise", "dataset.val_size"),
    ("+dataset.source.downlaod=false", "dataset.source.downlaod", "dataset.source.download"),
    ("+paths.data_diir=/tmp", "paths.data_diir", "paths.data_dir"),
    ("+optimizer.weight_dacay=0.1", "optimizer.weight_dacay", "optimizer.weight_decay"),
]


@pytest.mark.parametrize(("override", "key", "suggestion"), TYPOS, ids=[t[0] for t in TYPOS])
def test_an_unknown_key_is_refused_with_the_nearest_valid_one(override, key, suggestion):
    from cifarbench.config import validate
    from cifarbench.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        validate(compose_config([override]))
    message = str(caught.value)
    assert f"unknown config key {key}:" in message and f"did you mean {suggestion}?" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("extra", [["+optimizer.dampening=0.1"], ["optimizer=adamw", "+optimizer.betas=[0.9,0.99]"],
                                   ["+callbacks=[ema,swa]"], ["loss=distillation", "loss.teacher=x"]])
def test_keys_that_something_reads_are_accepted(extra):
    """A real argument of the optimizer (SGD's dampening, AdamW's betas) may be added with `+`."""
    from cifarbench.config import check_known_keys

    check_known_keys(compose_config(extra))


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_shipped_option_passes_the_key_check(group):
    from cifarbench.config import check_known_keys

    for option in options(group):
        check_known_keys(compose_config([f"{group}={option}"] + (["dataset.num_classes=3"] if option == "imagefolder"
                                                                 else [])))


def test_a_typo_stops_the_cli_before_any_data_is_read(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-data-here"
    proc = subprocess.run(
        [sys.executable, "-m", "cifarbench.train", "+trainer.epoch=3", f"paths.data_dir={missing}",
         "dataset.source.download=false", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "did you mean trainer.epochs?" in errors[0] and "not found" not in errors[0]


@pytest.mark.parametrize(("module", "args", "expected"), [
    ("cifarbench.train", ["dataset=imagefolder"], "dataset.source.root must be given"),
    ("cifarbench.evaluate", [], "checkpoint must be given: python -m cifarbench.evaluate checkpoint="),
])
def test_a_missing_mandatory_value_is_one_line(module, args, expected, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert expected in errors[0]


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


@pytest.mark.parametrize("value, refused", [(0.0, False), (0.99, False), (1.0, True), (-0.1, True)])
def test_label_smoothing_of_1_or_more_is_refused_before_training(value, refused):
    """label_smoothing=1 would train on uniform targets only: the check must refuse the boundary too."""
    from cifarbench.config import validate
    from cifarbench.errors import ConfigError

    cfg = compose_config([f"loss.label_smoothing={value}"])
    if refused:
        with pytest.raises(ConfigError, match=r"loss.label_smoothing=.* must be in \[0, 1\)"):
            validate(cfg)
    else:
        validate(cfg)


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
