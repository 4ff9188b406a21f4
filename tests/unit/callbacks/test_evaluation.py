"""cifarbench.engine.hooks.evaluation: which epochs are evaluated, which weights become best.pt and which weights
the final test uses."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch
from torch import nn

from cifarbench import checkpoint
from cifarbench.callbacks.swa import SwaCallback
from cifarbench.engine.state import TrainState
from cifarbench.errors import CifarbenchError
from tests.helpers.faulty import FAULTY
from tests.helpers.runs import SMALL, train_in_process
from tests.helpers.toy_models import _linear


# ------------------------------------------------------------------------------------- best model, test on best.pt
class _Checkpoints:
    enabled = True

    def __init__(self):
        self.saved = []

    def save_best(self, model, epoch, record):
        self.saved.append(epoch)


def test_a_later_epoch_that_only_ties_the_best_does_not_replace_best_pt():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import BestCheckpoint

    trainer = SimpleNamespace(state=TrainState(), monitor="val/acc", checkpoints=_Checkpoints())
    for epoch, acc in ((1, 0.5), (2, 0.5), (3, 0.4), (4, float("nan")), (5, 0.75), (6, 0.75)):
        trainer.state.epoch = epoch
        BestCheckpoint().update(trainer, {"epoch": epoch, "val/acc": acc}, None)
    assert trainer.checkpoints.saved == [1, 5]
    assert trainer.state.best == {"epoch": 5, "val/acc": 0.75}


def test_the_last_epoch_is_evaluated_whatever_eval_every_n_epochs_says():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import EpochEvaluation

    for every, expected in ((2, [False, True, False, True, True]), (0, [False] * 4 + [True]),
                            (1, [True] * 5), (3, [False, False, True, False, True])):
        hook = EpochEvaluation(every)
        assert [hook.is_due(epoch, 5) for epoch in range(1, 6)] == expected, every
        # ... and the hook acts on it: a record gets metrics exactly in the epochs that are due.
        records = []
        for epoch in range(1, 6):
            trainer = SimpleNamespace(state=TrainState(epoch=epoch), epochs=5)
            hook.evaluate = lambda trainer: {"val/acc": 0.5}
            record = {"epoch": epoch}
            hook.on_epoch_end(trainer, record)
            records.append("val/acc" in record)
        assert records == expected, every


def test_the_selected_test_runs_on_best_pt_and_the_final_test_on_the_last_weights(tmp_path):
    """With a validation split the test set is evaluated twice at the end: the last epoch's weights (final_test)
    and best.pt's (the selected model), so that a run reports both."""
    from types import SimpleNamespace

    from cifarbench import checkpoint
    from cifarbench.engine.hooks.evaluation import EpochEvaluation
    from cifarbench.engine.metrics import evaluate

    g = torch.Generator().manual_seed(3)
    batch = (torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    best, last = _linear(0), _linear(1)
    checkpoint.save_checkpoint(tmp_path / "checkpoints" / "best.pt", {"kind": "best", "model": best.state_dict()})
    trainer = SimpleNamespace(runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)), run_dir=tmp_path,
                              model=last, checkpoints=_Checkpoints(), monitor="val/acc", monitor_split="val",
                              state=TrainState())
    trainer.evaluate_split = lambda split, model=None, predict=None: evaluate(
        model or trainer.model, [batch], num_classes=3, device=torch.device("cpu"))
    expected = evaluate(best, [batch], num_classes=3, device=torch.device("cpu"))
    final = evaluate(last, [batch], num_classes=3, device=torch.device("cpu"))
    assert expected["loss"] != final["loss"]
    evaluation = EpochEvaluation()
    test = evaluation.test(trainer)
    assert test["loss"] == expected["loss"] and test["acc"] == expected["acc"]
    assert evaluation.final_test == {"loss": final["loss"], "acc": final["acc"], "top5": final["top5"]}
    assert torch.equal(trainer.model.weight, best.weight)


def test_each_callback_model_is_evaluated_with_its_own_weights():
    from types import SimpleNamespace

    from cifarbench.engine.hooks.evaluation import EpochEvaluation

    def score(model: nn.Module) -> float:
        return float(model.weight.detach().sum())

    trained, averaged = _linear(0), _linear(1)
    trainer = SimpleNamespace(
        monitor_split="val", model=trained, runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)),
        evaluate_split=lambda split, model=None: {"loss": score(model or trained), "acc": 0.5, "top5": 1.0})
    evaluation = EpochEvaluation()
    evaluation.add_model("ema", averaged)
    record = evaluation.evaluate(trainer)
    assert score(trained) != score(averaged)
    assert record == {"val/loss": score(trained), "val/acc": 0.5, "val/top5": 1.0,
                      "val_ema/loss": score(averaged), "val_ema/acc": 0.5, "val_ema/top5": 1.0}


def test_a_nan_metric_never_becomes_best_pt(tmp_path, fault_models):
    """Evaluation gives NaN logits from epoch 1 on: the accuracy is still a number, but the model is broken."""
    run_dir = tmp_path / "run"
    problems = []
    try:
        train_in_process(SMALL + FAULTY + ["+model.nan_eval=true", "trainer.epochs=2"], run_dir)
    except CifarbenchError:
        pass  # refusing to go on, with a message, is fine too
    except Exception as error:  # noqa: BLE001 - any other exception is a crash the user meets as a traceback
        problems.append(f"the run crashed: {type(error).__name__}: {error}")
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        metrics = checkpoint.load_checkpoint(best)["metrics"]
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            problems.append(f"best.pt was saved from an epoch with non-finite metrics {bad}")
    try:
        written = json.loads((run_dir / "metrics.json").read_text())
        if written["status"] not in ("completed", "failed"):
            problems.append(f"metrics.json status {written['status']!r}")
    except (OSError, ValueError) as error:
        problems.append(f"metrics.json unreadable: {error}")
    assert not problems, "; ".join(problems)


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
