"""The training tricks wired into real runs: mixing, EMA, SWA, distillation and test-time augmentation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_cifar_overrides, train_in_process

from cifarbench.checkpoint import load_checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.engine.trainer import Trainer
from cifarbench.errors import CheckpointError, ConfigError


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


def test_swa_averages_after_its_start_epoch_and_updates_bn(tmp_path, cifar_root):
    result = train_in_process(
        tiny_cifar_overrides(cifar_root)
        + ["trainer.epochs=3", "+callbacks=swa", "callbacks.swa.start_epoch=2", "callbacks.swa.lr=0.01",
           "callbacks.swa.anneal_epochs=0"],
        tmp_path / "run",
    )
    assert result["swa"] is not None and 0 <= result["swa"]["test_swa/acc"] <= 1
    # Epoch 2 still follows the cosine schedule; its weights start the average and SWALR holds swa.lr from then on.
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.075, 0.025, 0.01], rel=1e-6)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert int(last["callbacks"]["swa"]["averaged"]["n_averaged"]) == 2


def test_mixup_cutmix_run_reports_accuracy_against_the_dominant_label(tmp_path, cifar_root, monkeypatch):
    """train/acc under mixing: the share of images whose prediction is the class with the larger mixing weight,
    counted here from the very logits and targets of every step."""
    counted = {"correct": 0, "seen": 0}
    original = Trainer.train_step

    def recording_step(self, *args, **kwargs):
        loss, logits, targets = original(self, *args, **kwargs)
        assert targets.ndim == 2, "mixing gives soft targets"
        counted["correct"] += int((logits.argmax(dim=1) == targets.argmax(dim=1)).sum())
        counted["seen"] += len(targets)
        return loss, logits, targets

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["mix=mixup_cutmix", "loss.label_smoothing=0.1"],
                              tmp_path / "run")
    assert counted["seen"] == 192 and counted["correct"] > 0
    assert result["final"]["train/acc"] == pytest.approx(counted["correct"] / counted["seen"])
    assert result["final"]["train/loss"] > 0


def test_distillation_from_a_cifarbench_checkpoint(tmp_path, cifar_root):
    """The student follows its teacher: the same student run distilled from two different teachers ends with
    different weights (with the teacher term off, both would be the same label-only run)."""
    teachers = []
    for seed in (0, 1):
        teacher_dir = tmp_path / f"teacher{seed}"
        train_in_process(tiny_cifar_overrides(cifar_root) + [f"trainer.seed={seed}"], teacher_dir)
        teachers.append(teacher_dir / "checkpoints" / "best.pt")
    students = []
    for i, teacher in enumerate(teachers):
        result = train_in_process(
            tiny_cifar_overrides(cifar_root) + ["loss=distillation", f"loss.teacher={teacher}",
                                                "loss.temperature=2.0", "loss.alpha=1.0", "model=resnet32"],
            tmp_path / f"student{i}",
        )
        assert result["status"] == "completed" and result["params"] > 400_000
        students.append(load_checkpoint(tmp_path / f"student{i}" / "checkpoints" / "last.pt")["model"])
    differs = [name for name in students[0] if not torch.equal(students[0][name], students[1][name])]
    assert differs, "the teacher had no effect on the student"


def test_distillation_refuses_a_teacher_with_other_classes(tmp_path, cifar_root):
    teacher_dir = tmp_path / "teacher"
    train_in_process(
        ["model=resnet20", "dataset=synthetic", "dataset.num_classes=4", "dataset.source.train_size=64",
         "dataset.source.test_size=16", "trainer.epochs=1", "trainer.batch_size=32", "trainer.device=cpu",
         "trainer.progress_bar=false"],
        teacher_dir,
    )
    with pytest.raises(ConfigError, match="predicts 4 classes but this dataset has 10"):
        train_in_process(tiny_cifar_overrides(cifar_root) + ["loss=distillation",
                                                             f"loss.teacher={teacher_dir}/checkpoints/best.pt"],
                         tmp_path / "student")
    with pytest.raises(CheckpointError, match="does not exist"):
        train_in_process(tiny_cifar_overrides(cifar_root) + ["loss=distillation",
                                                             f"loss.teacher={tmp_path}/missing.pt"],
                         tmp_path / "student2")


def test_tta_applies_to_the_final_test_and_to_evaluate(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["+callbacks=tta", "callbacks.tta.mode=flip"], run_dir)
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu", tta="flip")
    assert evaluated["acc"] == result["test"]["acc"]
    assert evaluated["loss"] == pytest.approx(result["test"]["loss"], rel=1e-6)
    plain = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    assert plain["loss"] != pytest.approx(evaluated["loss"], rel=1e-9)
