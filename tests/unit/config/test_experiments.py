"""Every published recipe in conf/experiment composes with its own settings and trains an epoch on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cifarbench.checkpoint import load_checkpoint, stored_config
from cifarbench.config import config_dir, validate
from cifarbench.errors import ConfigError
from cifarbench.models.stats import count_parameters
from tests.helpers.config import compose_config
from tests.helpers.runs import train_in_process

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


# Tiny synthetic data at 8 px (every network here pools globally, so any size runs) so that even the
# 36M-parameter recipes take one quick epoch on two CPU cores.
TINY = [
    "dataset=synthetic", "dataset.source.test_size=4", "dataset.image_size=8", "trainer.epochs=1",
    "trainer.batch_size=8", "trainer.eval_batch_size=4", "trainer.device=cpu", "trainer.progress_bar=false",
]


# Each recipe's network: its model option and its parameter count for 10 classes (README's model table, measured;
# tests/unit/models/test_models.py checks those against the papers).
RECIPE_MODELS = {
    "airbench94": ("airbench94", 1.97e6),
    "airbench94_muon": ("airbench94", 1.97e6),
    "airbench95": ("airbench94", 4.61e6),  # make_net95's count (tests/unit/models/test_airbench.py)
    "airbench96": ("airbench94", 12.72e6),  # make_net96's
    "airbench96_faster": ("airbench94", 9.92e6),  # widths 128/384/512, the residual groups
    "paper_densenet100": ("densenet100", 0.769e6),
    "paper_densenet190": ("densenet190", 25.62e6),
    "paper_pyramidnet110": ("pyramidnet110", 28.49e6),
    "paper_pyramidnet272_shakedrop_aa_sam": ("pyramidnet272", 26.21e6),
    "pyramidnet272_shakedrop_autoaugment": ("pyramidnet272", 26.21e6),
    "paper_wrn_28_10": ("wrn_28_10", 36.48e6),
    "paper_wrn_28_10_aa_sam": ("wrn_28_10", 36.48e6),
    "seed_part3_densenet100": ("densenet100", 0.769e6),
    "seed_part3_densenet190": ("densenet190", 25.62e6),
    "seed_part3_preact_resnet18": ("preact_resnet18", 11.17e6),
    "seed_part3_pyramidnet110": ("pyramidnet110", 28.49e6),
    "seed_part3_resnet110": ("resnet110", 1.73e6),
    "seed_part3_resnet18": ("resnet18", 11.17e6),
    "seed_part3_simple_cnn": ("simple_cnn", 2.83e6),
    "seed_part3_wrn_28_10": ("wrn_28_10", 36.48e6),
    "seed_part4": ("resnet18", 11.17e6),
    "seed_resnext": ("resnext29_8x8d_small", 0.82e6),
    "seed_wrn": ("wrn_28_10", 36.48e6),
    # ViT-B/16 at 384 px (a 24 x 24 patch grid), 10 classes: 85.8M at 224 px plus 432 more position embeddings.
    "transfer_vit_b16": ("timm", 86.10e6),
}


def test_every_recipe_is_listed():
    assert sorted(RECIPE_MODELS) == EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipe_builds_the_network_it_names(experiment):
    option, params = RECIPE_MODELS[experiment]
    # Pretrained weights would be fetched from timm's hub: the count needs the architecture only.
    offline = ["model.pretrained=false"] if experiment.startswith("transfer_") else []
    cfg = compose_config([f"experiment={experiment}", "dataset=cifar10"] + offline)
    assert cfg.model._target_ == compose_config([f"model={option}"]).model._target_
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert count_parameters(model) == pytest.approx(params, rel=0.01)


def test_paper_recipes_follow_their_papers_per_dataset():
    """Han et al. 2017 train PyramidNet at lr 0.1 on CIFAR-10 and 0.5 on CIFAR-100; the others use one lr."""
    for name in ("paper_pyramidnet110", "pyramidnet272_shakedrop_autoaugment"):
        lrs = [compose_config([f"experiment={name}", f"dataset={d}"]).optimizer.lr for d in ("cifar10", "cifar100")]
        assert lrs == [0.1, 0.5], name
    expected = {  # epochs, batch, milestones, gamma, weight decay
        "paper_pyramidnet110": (300, 128, [150, 225], 0.1, 1e-4),
        "paper_densenet100": (300, 64, [150, 225], 0.1, 1e-4),
        "paper_densenet190": (300, 64, [150, 225], 0.1, 1e-4),
        "paper_wrn_28_10": (200, 128, [60, 120, 160], 0.2, 5e-4),
    }
    for name, (epochs, batch, milestones, gamma, wd) in expected.items():
        for dataset in ("cifar10", "cifar100"):
            cfg = compose_config([f"experiment={name}", f"dataset={dataset}"])
            got = (cfg.trainer.epochs, cfg.trainer.batch_size, list(cfg.scheduler.milestones), cfg.scheduler.gamma,
                   cfg.optimizer.weight_decay)
            assert got == (epochs, batch, milestones, gamma, wd), (name, dataset)
            assert cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9


def test_seed_table_recipes_follow_the_seed_article():
    table = [name for name in EXPERIMENTS if name.startswith("seed_part3_")]
    assert len(table) == 8
    for name in table:
        cfg = compose_config([f"experiment={name}"])
        assert list(cfg.augment) == ["crop", "flip", "autoaugment", "cutout"]
        assert cfg.augment.crop.padding_mode == "reflect" and cfg.augment.cutout.length == 16
        assert cfg.optimizer.nesterov and cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
        assert cfg.scheduler._target_ == "cifarbench.optim.schedules.cosine" and cfg.trainer.epochs == 200
        assert cfg.model._target_.split(".")[-1] != ""


def test_sam_recipes_follow_the_authors_code():
    """google-research/sam's defaults: SGD Nesterov 0.9, lr 0.1 cosine, batch 128, L2 1e-3, clip 5, rho 0.05,
    crop + flip + AutoAugment."""
    for name, epochs in (("paper_wrn_28_10_aa_sam", 200), ("paper_pyramidnet272_shakedrop_aa_sam", 1800)):
        cfg = compose_config([f"experiment={name}"])
        assert (cfg.sam.rho, cfg.sam.adaptive, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.05, False, 0.1, 1e-3)
        assert cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9 and cfg.trainer.grad_clip_norm == 5.0
        assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (epochs, 128)
        assert cfg.scheduler._target_.endswith(".cosine") and cfg.scheduler.warmup_epochs == 0
        assert list(cfg.augment) == ["crop", "flip", "autoaugment"], name
    assert compose_config(["experiment=paper_wrn_28_10_aa_sam"]).model.dropout == 0.0
    assert compose_config(["experiment=paper_pyramidnet272_shakedrop_aa_sam"]).model.shakedrop == 0.5


def test_seed_part4_adds_the_series_next_tricks_to_the_part3_recipe():
    part3, part4 = compose_config(["experiment=seed_part3_resnet18"]), compose_config(["experiment=seed_part4"])
    assert part4.augment == part3.augment and part4.optimizer == part3.optimizer
    assert part4.trainer.epochs == part3.trainer.epochs == 200
    assert (part4.loss.label_smoothing, part4.model.drop_path, part4.scheduler.warmup_epochs) == (0.1, 0.1, 5)
    assert part4.loss._target_.endswith("DistillationLoss") and part4.callbacks.ema.decay == 0.999
    with pytest.raises(ConfigError, match="loss=distillation needs a teacher: loss.teacher="):
        validate(part4)


def test_transfer_vit_b16_follows_the_vit_papers_fine_tuning():
    cfg = compose_config(["experiment=transfer_vit_b16"])
    assert cfg.model.name == "vit_base_patch16_224.orig_in21k" and cfg.model.pretrained and cfg.model.input_size == 384
    assert cfg.trainer.batch_size * cfg.trainer.accumulate_steps == 512 and cfg.trainer.grad_clip_norm == 1.0
    assert cfg.trainer.epochs * 50_000 / 512 == pytest.approx(10_000)  # the paper's 10k steps
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay, cfg.optimizer.lr) == (0.9, 0.0, 0.01)
    assert cfg.scheduler._target_.endswith(".cosine")


def test_seed_notebook_and_blog_recipes():
    resnext = compose_config(["experiment=seed_resnext"])
    assert resnext.dataset.name == "cifar100" and resnext.dataset.val_size == 5000
    assert resnext.dataset.val_split == "tail" and resnext.trainer.batch_size == 1024
    assert resnext.optimizer._target_ == "torch.optim.AdamW" and resnext.scheduler.max_lr == 0.01
    assert (resnext.loss.label_smoothing, resnext.trainer.grad_clip_norm, resnext.trainer.epochs) == (0.1, 5.0, 40)
    wrn = compose_config(["experiment=seed_wrn"])
    assert list(wrn.scheduler.milestones) == [60, 120, 160] and wrn.scheduler.gamma == 0.2
    assert wrn.model.dropout == 0.3 and "cutout" in wrn.augment


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_one_epoch_on_tiny_data(tmp_path, experiment, request):
    cfg = compose_config([f"experiment={experiment}"])
    extra = ["dataset.val_size=4"] if cfg.dataset.val_size else []
    if cfg.loss.get("teacher", False) is None:  # distillation: a teacher of the same classes
        extra.append(f"loss.teacher={request.getfixturevalue('trained') / 'best.pt'}")
    if (cfg.scheduler.get("warmup_epochs") or 0) > 1:  # the warmup must fit in the one epoch
        extra.append("scheduler.warmup_epochs=0.5")
    if cfg.model.get("pretrained"):  # no hub here: the architecture from scratch, at a size a CPU trains quickly
        extra += ["model.pretrained=false", "model.input_size=32", "trainer.accumulate_steps=1"]
    classes = cfg.dataset.num_classes
    extra += [f"dataset.num_classes={classes}", f"dataset.source.train_size={max(16, classes + 12)}"]
    if cfg.model._target_.endswith("Airbench94"):  # its pooling needs 32x32 inputs
        extra.append("dataset.image_size=32")
    result = train_in_process([f"experiment={experiment}"] + TINY + extra, tmp_path / "run")
    assert result["status"] == "completed" and result["epochs"] == 1
    assert result["test"] is not None and 0.0 <= result["test"]["acc"] <= 1.0
    assert result["final"]["train/loss"] > 0 and result["final"]["train/loss"] < 100
    # The run trained the recipe's own network and optimiser, as its best.pt records.
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    stored = stored_config(best)
    assert stored.model._target_ == cfg.model._target_ and stored.optimizer == cfg.optimizer
    assert result["params"] == sum(w.numel() for k, w in best["model"].items() if w.is_floating_point()
                                   and "running_" not in k)
