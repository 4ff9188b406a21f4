"""Fast guards on the tricks' callbacks, each written for a mutation that the rest of the suite let through: SWA
replaces best.pt only when it beats it (after recomputing its BatchNorm statistics), and Lookahead's average
survives a resume."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from cifarbench.callbacks.lookahead import Lookahead
from cifarbench.callbacks.swa import SwaCallback
from cifarbench.engine.state import TrainState


def _swa_trainer(swa_acc: float, best_acc: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 3))
    images = torch.randn(8, 3, 2, 2) * 2 + 3
    calls = []
    trainer = SimpleNamespace(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), monitor_split="val", monitor="val/acc",
        state=TrainState(epoch=2, best={"epoch": 1, "val/acc": best_acc}),
        runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)),
        loaders=SimpleNamespace(train=[(images, torch.zeros(8, dtype=torch.long))]),
        log=SimpleNamespace(scalars=lambda values, step: None),
        evaluate_split=lambda split, model=None: {"loss": 1.0, "acc": swa_acc, "top5": 1.0},
        hooks={"best_checkpoint": SimpleNamespace(update=lambda trainer, record, weights: calls.append(record))},
    )
    return trainer, calls


def test_the_swa_model_becomes_best_pt_only_when_it_beats_the_best_epoch():
    for swa_acc, best_acc, expected in ((0.8, 0.5, 1), (0.3, 0.5, 0), (0.5, 0.5, 0)):
        trainer, calls = _swa_trainer(swa_acc, best_acc)
        callback = SwaCallback(start_epoch=1, lr=0.05, anneal_epochs=0)
        callback.setup(trainer)
        callback.swa.after_epoch(1)
        callback.on_train_end(trainer)
        assert len(calls) == expected, (swa_acc, best_acc)
        assert callback.record == {"epoch": 2, "val_swa/loss": 1.0, "val_swa/acc": swa_acc, "val_swa/top5": 1.0}
        if expected:
            assert calls[0]["val/acc"] == swa_acc and calls[0]["source"] == "swa"
        # Before it is evaluated, the average's BatchNorm statistics are recomputed on the training batches.
        images = trainer.loaders.train[0][0]
        torch.testing.assert_close(callback.swa.module[0].running_mean, images.mean(dim=(0, 2, 3)))


def test_lookaheads_average_is_restored_from_its_state_dict():
    saved, resumed = Lookahead(), Lookahead()
    saved.average = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    resumed.average = {"w": torch.zeros(2), "n": torch.tensor(0)}
    resumed.load_state_dict(saved.state_dict())
    assert torch.equal(resumed.average["w"], torch.tensor([1.0, 2.0])) and int(resumed.average["n"]) == 3
