"""Every published recipe in conf/experiment composes with its own settings and trains an epoch on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config, train_in_process

from cifarbench.config import config_dir

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))

# Tiny synthetic data at 8 px (every network here pools globally, so any size runs) so that even the
# 36M-parameter recipes take one quick epoch on two CPU cores.
TINY = [
    "dataset=synthetic", "dataset.source.test_size=4", "dataset.image_size=8", "trainer.epochs=1",
    "trainer.batch_size=8", "trainer.eval_batch_size=4", "trainer.device=cpu", "trainer.progress_bar=false",
]


def test_seed_table_recipes_follow_the_seed_article():
    table = [name for name in EXPERIMENTS if name.startswith("seed_part3_")]
    assert len(table) == 8
    for name in table:
        cfg = compose_config([f"experiment={name}"])
        assert list(cfg.augment) == ["crop", "flip", "autoaugment", "cutout"]
        assert cfg.augment.crop.padding_mode == "reflect" and cfg.augment.cutout.length == 16
        assert cfg.optimizer.nesterov and cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
        assert cfg.scheduler._target_ == "cifarbench.optim.cosine" and cfg.trainer.epochs == 200
        assert cfg.model._target_.split(".")[-1] != ""


def test_seed_notebook_and_blog_recipes():
    resnext = compose_config(["experiment=seed_resnext"])
    assert resnext.dataset.name == "cifar100" and resnext.dataset.val_size == 5000
    assert resnext.dataset.val_split == "tail" and resnext.trainer.batch_size == 1024
    assert resnext.optimizer._target_ == "torch.optim.AdamW" and resnext.scheduler.max_lr == 0.01
    assert (resnext.trainer.label_smoothing, resnext.trainer.grad_clip_norm, resnext.trainer.epochs) == (0.1, 5.0, 40)
    wrn = compose_config(["experiment=seed_wrn"])
    assert list(wrn.scheduler.milestones) == [60, 120, 160] and wrn.scheduler.gamma == 0.2
    assert wrn.model.dropout == 0.3 and "cutout" in wrn.augment


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_one_epoch_on_tiny_data(tmp_path, experiment):
    cfg = compose_config([f"experiment={experiment}"])
    extra = ["dataset.val_size=4"] if cfg.dataset.val_size else []
    classes = cfg.dataset.num_classes
    extra += [f"dataset.num_classes={classes}", f"dataset.source.train_size={max(16, classes + 12)}"]
    result = train_in_process([f"experiment={experiment}"] + TINY + extra, tmp_path / "run")
    assert result["status"] == "completed" and result["epochs"] == 1
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert result["params"] > 0 and 0.0 <= result["test"]["acc"] <= 1.0
