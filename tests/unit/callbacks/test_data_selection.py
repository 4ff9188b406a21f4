"""Loss-based data selection (cifarbench.callbacks.data_selection): the main step sees exactly the proxy's top-k
examples, the counts say what each network trained on, and a resumed run selects what a straight one does."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from cifarbench import checkpoint
from cifarbench.callbacks.data_selection import DataSelection
from cifarbench.engine.step import TrainStep
from tests.helpers.compare import assert_same_run
from tests.helpers.runs import SMALL, build_error, reference_run, stopped_in_epoch_2

# resnet20 on 96 synthetic images in batches of 16 (6 steps per epoch); the proxy, a small airbench network.
SELECTING = SMALL + ["+callbacks=data_selection", "callbacks.data_selection.proxy.widths=[8,16,16]"]


def test_a_fixed_proxy_keeps_exactly_the_top_k_by_loss_and_the_step_sees_only_those(tmp_path, monkeypatch):
    seen_by_step, checked = [], []
    original_select, original_step = DataSelection.on_train_batch_start, TrainStep.__call__

    def select(self, trainer, images, labels):
        proxy = copy.deepcopy(self.proxy).train()
        with torch.no_grad():  # the proxy's loss of every example, written out here
            losses = F.cross_entropy(proxy(images), labels, reduction="none")
        expected = sorted(losses.topk(4).indices.tolist())
        kept_images, kept_labels = original_select(self, trainer, images, labels)
        assert torch.equal(kept_images, images[expected]) and torch.equal(kept_labels, labels[expected])
        # An anchor: the kept examples are harder than every dropped one.
        dropped = [i for i in range(len(labels)) if i not in expected]
        assert losses[expected].min() >= losses[dropped].max()
        checked.append(kept_images)
        return kept_images, kept_labels

    def step(self, images, labels, *args, **kwargs):
        seen_by_step.append(images)
        return original_step(self, images, labels, *args, **kwargs)

    monkeypatch.setattr(DataSelection, "on_train_batch_start", select)
    monkeypatch.setattr(TrainStep, "__call__", step)
    run_dir = reference_run(SELECTING + ["trainer.epochs=2", "callbacks.data_selection.keep=4",
                                         "callbacks.data_selection.train_proxy_every=0"], tmp_path / "run")
    assert len(checked) == len(seen_by_step) == 12
    assert all(torch.equal(a, b) for a, b in zip(checked, seen_by_step))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data_selection"] == {"kept_per_batch": "4 examples", "proxy_forward_images": 12 * 16,
                                         "proxy_backward_images": 0}
    state = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]
    assert state["train_samples"] == 12 * 4  # img/s counts the examples the main network trained on
    assert metrics["img_per_s"] == pytest.approx(state["train_samples"] / state["train_time"])


@pytest.mark.parametrize(("trains_on", "every", "backward", "loader"), [
    ("all", 1, 6 * 16, "device"), ("kept", 1, 6 * 8, "torch"), ("kept", 4, 2 * 8, "device")])
def test_the_proxy_trains_on_what_it_is_told_and_is_counted(tmp_path, trains_on, every, backward, loader):
    """Any loader that yields batches: the on-device one and the per-sample DataLoader alike."""
    run_dir = reference_run(SELECTING + ["trainer.epochs=1", f"callbacks.data_selection.proxy_trains_on={trains_on}",
                                         f"callbacks.data_selection.train_proxy_every={every}",
                                         f"dataset.loader={loader}", "dataset.num_workers=0"], tmp_path / "run")
    metrics = json.loads((run_dir / "metrics.json").read_text())["data_selection"]
    assert metrics["proxy_forward_images"] == 96 and metrics["proxy_backward_images"] == backward
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")["callbacks"]["data_selection"]
    assert saved["steps"] == 6 and saved["optimizer"]["state"], "the proxy's optimizer state is in last.pt"


def test_a_resumed_run_selects_and_trains_exactly_as_a_straight_one(tmp_path, monkeypatch):
    overrides = SELECTING + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto",
                             "callbacks.data_selection.train_proxy_every=2"]
    reference = reference_run(overrides, tmp_path / "reference")
    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run",
                                 lambda: os.kill(os.getpid(), signal.SIGTERM), "SIGTERM")
    reference_run(overrides, run_dir)
    assert_same_run(reference, run_dir, epochs=2)
    proxies = [checkpoint.load_checkpoint(d / "checkpoints" / "last.pt")["callbacks"]["data_selection"]["proxy"]
               for d in (reference, run_dir)]
    assert all(torch.equal(proxies[0][name], proxies[1][name]) for name in proxies[0])


@pytest.mark.parametrize(("override", "message"), [
    ("callbacks.data_selection.proxy.widths=[8,16]", "proxy (cifarbench.models.airbench.Airbench94) cannot take this "
                                                   "dataset's 3x32x32 images"),
    ("callbacks.data_selection.keep=0", "keep=0 must be a fraction in (0, 1] or a whole number"),
    ("callbacks.data_selection.keep=1.5", "keep=1.5 must be a fraction"),
    ("callbacks.data_selection.proxy_trains_on=some", "proxy_trains_on='some' must be one of all, kept"),
    ("callbacks.data_selection.train_proxy_every=-1", "train_proxy_every=-1 must be >= 0"),
])
def test_bad_settings_are_one_clear_message(tmp_path, override, message):
    assert message in build_error(SELECTING[len(SMALL):] + [override], tmp_path)
