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
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["dataset.val_size=50", "trainer.epochs=2"], run_dir)
    assert result["monitor"] == "val/acc"
    assert all("val/acc" in h and "test/acc" not in h for h in result["history"])
    logged = scalars(run_dir)
    assert "val/acc" in logged and "test/acc" not in logged
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["metrics"]["val/acc"] == max(h["val/acc"] for h in result["history"])
    assert result["test"]["acc"] == evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")["acc"]
