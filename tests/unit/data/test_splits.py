"""cifarbench.data.splits: the validation split (stratified or tail) and channel statistics, and a run that selects
on the validation split."""

from __future__ import annotations

import pytest
import torch

from cifarbench.checkpoint import load_checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.data.splits import channel_stats, hold_out_validation, validation_indices
from cifarbench.data.synthetic import synthetic
from cifarbench.errors import ConfigError
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.events import scalars
from tests.helpers.runs import train_in_process


def test_stratified_validation_split_is_seeded_and_keeps_class_shares():
    labels = torch.arange(1000) % 10
    train_a, val_a = validation_indices(labels, 100, seed=3)
    train_b, val_b = validation_indices(labels, 100, seed=3)
    _, val_c = validation_indices(labels, 100, seed=4)
    assert torch.equal(val_a, val_b) and not torch.equal(val_a, val_c)
    assert len(val_a) == 100 and len(train_a) == 900
    assert set(val_a.tolist()).isdisjoint(train_a.tolist())
    assert torch.bincount(labels[val_a]).tolist() == [10] * 10
    _, val_fraction = validation_indices(labels, 0.25, seed=0)
    assert len(val_fraction) == 250


def test_tail_split_holds_out_the_last_images_by_index():
    train, val = validation_indices(torch.arange(50) % 5, 10, seed=0, mode="tail")
    assert val.tolist() == list(range(40, 50)) and train.tolist() == list(range(40))


def test_validation_split_larger_than_train_is_refused():
    splits = synthetic(train_size=100, test_size=10)
    with pytest.raises(ConfigError, match=r"val_size=500 .* only 100"):
        hold_out_validation(splits.train, 500, seed=0)


def test_channel_stats_sum_over_every_chunk_of_a_large_split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=g)
    pixels = images.to(torch.float64).div(255.0).transpose(0, 1).reshape(3, -1)
    mean, std = channel_stats(images, chunk=3)  # chunks of 3, 3, 3 and 1 images
    assert mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-4)
    assert std == pytest.approx(pixels.std(dim=1, unbiased=False).tolist(), abs=1e-4)
    assert channel_stats(images, chunk=3) == channel_stats(images)


def test_a_stratified_split_holds_out_exactly_val_size_images_by_largest_remainder():
    from cifarbench.data.splits import validation_indices

    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    # Shares of 3: 1.5, 0.9, 0.6 -> floors 1, 0, 0; the 2 left over go to the largest remainders, classes 1 and 2.
    train, val = validation_indices(labels, 3, seed=0)
    assert len(val) == 3 and len(train) == 7
    assert sorted(train.tolist() + val.tolist()) == list(range(10))
    assert torch.bincount(labels[val], minlength=3).tolist() == [1, 1, 1]
    # 7 of 10: 3.5, 2.1, 1.4 -> 3, 2, 1 and the one left over to class 0.
    _, val = validation_indices(labels, 7, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [4, 2, 1]


def test_validation_split_selects_on_val_and_tests_once(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root, val_size="50") + ["trainer.epochs=2"], run_dir)
    assert result["monitor"] == "val/acc"
    assert all("val/acc" in h and "test/acc" not in h for h in result["history"])
    logged = scalars(run_dir)
    assert "val/acc" in logged and "test/acc" not in logged
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["metrics"]["val/acc"] == max(h["val/acc"] for h in result["history"])
    assert result["test"]["acc"] == evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")["acc"]


# ------------------------------------------------------------------------------------------------ k-fold
def test_folds_are_disjoint_cover_the_training_set_and_are_stratified():
    from cifarbench.data.splits import fold_indices

    labels = torch.tensor([0] * 53 + [1] * 31 + [2] * 17 + [3] * 9)  # uneven classes: 110 images
    vals = [fold_indices(labels, 5, fold, seed=0) for fold in range(5)]
    held_out = [set(val.tolist()) for _, val in vals]
    assert sum(len(fold) for fold in held_out) == 110 and set().union(*held_out) == set(range(110))  # each once
    for train, val in vals:
        assert set(train.tolist()) == set(range(110)) - set(val.tolist())
    sizes = [len(fold) for fold in held_out]
    assert max(sizes) - min(sizes) <= 1  # 22 each
    per_class = torch.stack([torch.bincount(labels[val], minlength=4) for _, val in vals])  # fold x class
    assert (per_class.max(dim=0).values - per_class.min(dim=0).values).max() <= 1
    assert per_class.sum(dim=0).tolist() == [53, 31, 17, 9]
    # Deterministic: the same seed deals the same folds, another seed other ones.
    assert torch.equal(fold_indices(labels, 5, 2, seed=0)[1], vals[2][1])
    assert not torch.equal(fold_indices(labels, 5, 2, seed=1)[1], vals[2][1])


def test_the_folds_are_the_same_for_every_model_and_training_seed():
    from cifarbench.engine.setup import build_data
    from tests.helpers.config import compose_config

    def val_images(*overrides):
        cfg = compose_config(["dataset=synthetic", "dataset.source.train_size=300", "dataset.folds=5",
                              "dataset.fold=3", *overrides])
        data = build_data(cfg.dataset, int(cfg.trainer.seed))
        return data.train, data.val

    train, val = val_images("model=resnet20")
    other_train, other_val = val_images("model=simple_cnn", "trainer.seed=7")
    assert len(val) == 60 and len(train) == 240 and not val_images("dataset.fold=2")[1].images.equal(val.images)
    assert torch.equal(val.images, other_val.images) and torch.equal(train.labels, other_train.labels)
    # dataset.folds takes over from the default validation split: the held-out set is the fold, not val_size.
    assert len(val_images("dataset.val_size=0.5")[1]) == 60


@pytest.mark.parametrize("overrides, message", [
    (["dataset.folds=5", "dataset.fold=5"], "dataset.fold=5 must be one of 0..4 with dataset.folds=5"),
    (["dataset.folds=5", "dataset.fold=-1"], "dataset.fold=-1 must be one of 0..4"),
    (["dataset.folds=1"], "dataset.folds=1 must be an integer >= 2"),
])
def test_a_fold_outside_the_folds_is_one_line(overrides, message, tmp_path):
    from tests.helpers.runs import build_error

    assert message in build_error(overrides, tmp_path)
