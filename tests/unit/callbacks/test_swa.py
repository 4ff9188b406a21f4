"""The SWA callback: averaging, BatchNorm update, its state and a run that uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarbench.callbacks.swa import SwaState
from cifarbench.checkpoint import load_checkpoint
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.runs import train_in_process
from tests.helpers.tensors import _gen, _Scalar


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


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def test_swa_bn_update_sets_running_stats_to_data_statistics():
    torch.manual_seed(0)
    model = _bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = SwaState(model, optimizer, swa_lr=0.05, start_epoch=1)
    optimizer.step()  # as in training: the LR schedulers expect an optimizer step before theirs
    swa.after_epoch(1)
    g = _gen(1)
    channel_mean = torch.tensor([2.0, -1.0, 5.0]).view(1, 3, 1, 1)
    batches = [(torch.randn(8, 3, 4, 4, generator=g) * 0.5 + channel_mean, torch.zeros(8)) for _ in range(5)]
    bn = swa.module[0]
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert swa.finalize(batches)
    # update_bn uses a cumulative average; equal batch sizes make that the mean of the whole data.
    data = torch.cat([images for images, _ in batches])
    assert torch.allclose(bn.running_mean, data.mean(dim=(0, 2, 3)), atol=1e-5)
    batch_vars = torch.stack([images.var(dim=(0, 2, 3)) for images, _ in batches])  # unbiased, per batch
    assert torch.allclose(bn.running_var, batch_vars.mean(dim=0), atol=1e-5)
    assert bn.momentum == 0.1  # restored after the pass


def test_swa_averages_from_start_epoch_and_takes_over_lr():
    model = _Scalar(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    swa = SwaState(model, optimizer, swa_lr=0.1, start_epoch=3, anneal_epochs=2, anneal_strategy="linear")
    snapshots = []
    for epoch in range(1, 7):
        model.w.data.fill_(float(epoch))
        optimizer.step()
        averaged = swa.after_epoch(epoch)
        assert averaged == (epoch >= 3)
        assert swa.controls_lr == (epoch >= 3)
        if averaged:
            snapshots.append(float(epoch))
    assert swa.num_averaged == 4
    assert swa.module.w.item() == pytest.approx(sum(snapshots) / len(snapshots))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # annealed to swa_lr after anneal_epochs
    assert swa.finalize([])  # no BN layers: update_bn has nothing to do and must not fail


def test_swa_state_dict_round_trip(tmp_path):
    def run(epochs, swa, model):
        for epoch in epochs:
            model.w.data.fill_(float(epoch) ** 2)
            swa.optimizer.step()
            swa.after_epoch(epoch)

    model = _Scalar(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    swa = SwaState(model, optimizer, swa_lr=0.1, start_epoch=2, anneal_epochs=4)
    run(range(1, 4), swa, model)
    torch.save({"swa": swa.state_dict(), "opt": optimizer.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)

    model2 = _Scalar(0.0)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    swa2 = SwaState(model2, optimizer2, swa_lr=0.1, start_epoch=2, anneal_epochs=4)
    optimizer2.load_state_dict(state["opt"])
    swa2.load_state_dict(state["swa"])
    assert swa2.controls_lr and swa2.num_averaged == 2
    run(range(4, 7), swa, model)
    run(range(4, 7), swa2, model2)
    assert swa2.module.w.item() == swa.module.w.item()
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_swa_finalize_before_start_is_a_no_op():
    model = _bn_net()
    swa = SwaState(model, torch.optim.SGD(model.parameters(), lr=0.1), swa_lr=0.05, start_epoch=10)
    assert not swa.after_epoch(1)
    assert not swa.finalize([torch.randn(2, 3, 4, 4)])
