"""Loss-based data selection (cifarbench.callbacks.data_selection): the main step sees exactly the proxy's top-k
examples, the counts say what each network trained on, and a resumed run selects what a straight one does."""

from __future__ import annotations

import copy
import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cifarbench import checkpoint
from cifarbench.callbacks.data_selection import DataSelection
from cifarbench.config import build
from cifarbench.distributed import DistContext
from cifarbench.engine.setup import build_data
from cifarbench.engine.step import TrainStep
from tests.helpers.compare import assert_same_run
from tests.helpers.config import compose_config
from tests.helpers.ranks import join_or_fail
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


# ------------------------------------------------------------------------------------------------- torchrun
RANK_STEPS = 3
# The record's way: the proxy trains on the kept examples only, its whitening bias frozen (a parameter without a
# gradient on every rank).
RANK_OVERRIDES = SELECTING + ["trainer.channels_last=true", "callbacks.data_selection.proxy_trains_on=kept",
                              "callbacks.data_selection.frozen=[whiten.bias]"]


def _callback_on(rank: int, world_size: int) -> tuple[DataSelection, SimpleNamespace]:
    """The callback set up as a trainer of `world_size` ranks sets it up, on the small run's data."""
    cfg = compose_config(RANK_OVERRIDES)
    trainer = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), data=build_data(cfg.dataset, 0), steps_per_epoch=6,
                              runtime=SimpleNamespace(precision="32", dist=DistContext(rank, rank, world_size)))
    callback = build(cfg.callbacks.data_selection)
    callback.setup(trainer)
    return callback, trainer


def _rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def _selecting_rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # each rank's proxy is drawn differently: setup must start them all from rank 0's
        callback, trainer = _callback_on(rank, 2)
        initial = {k: v.clone() for k, v in callback.proxy.state_dict().items()}
        for step in range(RANK_STEPS):
            callback.on_train_batch_start(trainer, *_rank_batch(rank, step))
        torch.save({"initial": initial, "proxy": dict(callback.proxy.named_parameters()),
                    "metrics": callback.metrics()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_under_torchrun_every_ranks_proxy_trains_on_the_averaged_gradient_and_the_counts_are_global(
        tmp_path, monkeypatch):
    """Two gloo ranks, each selecting within its own batches: the proxies start from rank 0's weights and take the
    step of the two ranks' gradients averaged, written out here, so their weights stay equal and rank 0's in last.pt
    resumes both; the counts add both ranks' images."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "proxy")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    context = mp.spawn(_selecting_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=False)
    join_or_fail(context, 600, "the two ranks hung")
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    assert all(torch.equal(ranks[0]["initial"][k], ranks[1]["initial"][k]) for k in ranks[0]["initial"])
    assert all(torch.equal(ranks[0]["proxy"][k], ranks[1]["proxy"][k]) for k in ranks[0]["proxy"])
    assert ranks[0]["metrics"]["data_selection"] == {"kept_per_batch": "50%", "proxy_forward_images": 2 * 3 * 16,
                                                     "proxy_backward_images": 2 * 3 * 8}
    # The published DDP update by hand, in one process: both ranks' gradients from the same weights, averaged.
    callback, _ = _callback_on(0, 1)
    callback.proxy.load_state_dict(ranks[0]["initial"])
    callback.proxy.train()
    parameters = [p for p in callback.proxy.parameters() if p.requires_grad]
    for step in range(RANK_STEPS):
        gradients = []
        for rank in range(2):
            callback.optimizer.zero_grad(set_to_none=True)
            losses = callback.proxy_losses(*_rank_batch(rank, step))
            kept = losses.detach().topk(8).indices  # this rank's own 8 hardest of 16
            (losses[kept].sum() if callback.sum_loss else losses[kept].mean()).backward()
            gradients.append([p.grad.clone() for p in parameters])
        for parameter, first, second in zip(parameters, *gradients):
            parameter.grad = (first + second) / 2
        callback.optimizer.step()
        callback.scheduler.step()
    expected = dict(callback.proxy.named_parameters())
    moved = [k for k in expected if not torch.equal(expected[k], ranks[0]["initial"][k])]
    assert len(moved) > len(expected) // 2 and "whiten.bias" not in moved, "the proxy trained, its frozen bias not"
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0]["proxy"][name], value.detach(), rtol=1e-5, atol=1e-6, msg=name)
