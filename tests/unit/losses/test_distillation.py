"""cifarbench.losses.distillation: the loss against a hand computation, the teacher, and runs distilled from a
checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifarbench.checkpoint import load_checkpoint
from cifarbench.errors import CheckpointError, ConfigError
from cifarbench.losses.distillation import distillation_loss, frozen_teacher
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.runs import toy_trainer, train_in_process


def test_the_distillation_teacher_follows_channels_last(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "teacher", ["trainer.epochs=1"]).fit()
    student = toy_trainer(toy_conf, tmp_path / "student", [
        "loss=distillation", f"loss.teacher={tmp_path / 'teacher' / 'checkpoints' / 'best.pt'}",
        "trainer.channels_last=true",
    ])
    conv = student.step.loss.teacher.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_distillation_without_a_teacher_is_one_clear_error(tmp_path, toy_conf):
    with pytest.raises(ConfigError, match=r"loss=distillation needs a teacher: loss.teacher="):
        toy_trainer(toy_conf, tmp_path / "run", ["loss=distillation"])


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


def _log_softmax(row):
    log_z = math.log(sum(math.exp(v) for v in row))
    return [v - log_z for v in row]


def _hand_kd(student, teacher, hard_targets, temperature, alpha, ls=0.0):
    total = 0.0
    for s, t, target in zip(student, teacher, hard_targets, strict=True):
        log_ps = _log_softmax([v / temperature for v in s])
        log_pt = _log_softmax([v / temperature for v in t])
        kl = sum(math.exp(lt) * (lt - ls_) for lt, ls_ in zip(log_pt, log_ps, strict=True))
        log_p = _log_softmax(s)
        c = len(s)
        weights = [(1 - ls) * (1.0 if k == target else 0.0) + ls / c for k in range(c)]
        ce = -sum(w * lp for w, lp in zip(weights, log_p, strict=True))
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
    return total / len(student)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_distillation_loss_equals_hand_computed_value(ls):
    student = [[1.0, 2.0, 0.0], [0.3, -0.5, 1.5]]
    teacher = [[0.5, 0.5, 2.0], [2.0, 0.0, -1.0]]
    targets = [1, 2]
    expected = _hand_kd(student, teacher, targets, temperature=4.0, alpha=0.7, ls=ls)
    got = distillation_loss(
        torch.tensor(student),
        torch.tensor(teacher),
        torch.tensor(targets),
        temperature=4.0,
        alpha=0.7,
        label_smoothing=ls,
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_distillation_accepts_soft_targets_and_only_trains_student():
    student = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.5, 0.5, 2.0]], requires_grad=True)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    soft = distillation_loss(student, teacher, one_hot, temperature=2.0, alpha=0.5)
    hard = distillation_loss(student, teacher, torch.tensor([1]), temperature=2.0, alpha=0.5)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    soft.backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(student, teacher, one_hot, temperature=0.0, alpha=0.5)


def test_frozen_teacher_is_eval_and_frozen():
    teacher = frozen_teacher(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
