"""trainer.target_acc and trainer.stop_at_target: the epoch, step and seconds at which the monitored accuracy first
reaches the target, on a run whose accuracies are set by hand, and a stop there that a resume respects."""

from __future__ import annotations

import json

import pytest

from cifarbench import checkpoint
from cifarbench.engine.hooks.evaluation import EpochEvaluation
from cifarbench.engine.hooks.time_to_target import TimeToTarget
from tests.helpers.runs import build_error, toy_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ACCURACIES = [0.40, 0.85, 0.93, 0.91, 0.97]  # the monitored accuracy of epochs 1-5: 0.9 first reached in epoch 3
STEPS_PER_EPOCH = 16  # the toy run: 256 images in batches of 16


@pytest.fixture
def scripted_accuracy(monkeypatch):
    """The evaluation hook reports ACCURACIES[epoch - 1] as the monitored accuracy."""
    def evaluate(self, trainer):
        acc = ACCURACIES[trainer.state.epoch - 1]
        return {f"{trainer.monitor_split}/acc": acc, f"{trainer.monitor_split}/loss": 1 - acc,
                f"{trainer.monitor_split}/top5": 1.0}

    monkeypatch.setattr(EpochEvaluation, "evaluate", evaluate)


def test_the_target_is_recorded_at_the_epoch_and_step_it_is_first_reached(tmp_path, toy_conf, scripted_accuracy):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=5", "trainer.target_acc=0.9"])
    result = trainer.fit()
    reached = result["time_to_target"]
    assert (reached["epoch"], reached["step"], reached["value"]) == (3, 3 * STEPS_PER_EPOCH, 0.93)
    assert result["epochs"] == 5 and result["stopped_early"] is None  # without stop_at_target the run goes on
    # The seconds are the training time of epochs 1-3 (evaluation excluded), no compile without trainer.compile.
    three_epochs = sum(record["time/epoch_s"] for record in result["history"][:3])
    assert reached["train_s"] == pytest.approx(three_epochs, rel=1e-6) and reached["compile_s"] == 0.0
    assert 0 < reached["train_s"] < reached["wall_s"]


def test_stop_at_target_ends_the_run_there_with_last_pt_and_a_resume_ends_at_once(tmp_path, toy_conf,
                                                                                  scripted_accuracy):
    extra = ["trainer.epochs=5", "trainer.target_acc=0.9", "trainer.stop_at_target=true",
             "trainer.checkpoint_every_n_epochs=2", "trainer.resume=auto"]
    result = toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    assert result["status"] == "completed" and result["epochs"] == 3 and result["test"] is not None
    assert "reached the target 0.9 in epoch 3" in result["stopped_early"]
    # last.pt is saved at the stop even though epoch 3 is not one of checkpoint_every_n_epochs=2's.
    last = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["state"]["global_step"] == 3 * STEPS_PER_EPOCH
    again = toy_trainer(toy_conf, tmp_path / "run", extra)
    again.fit()
    assert again.state.global_step == 3 * STEPS_PER_EPOCH and again.state.epoch == 3  # nothing more trained
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["time_to_target"]["epoch"] == 3 and metrics["status"] == "completed"


def test_a_target_never_reached_says_so(tmp_path, toy_conf, scripted_accuracy):
    result = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=2", "trainer.target_acc=0.99"]).fit()
    assert result["time_to_target"] == {"target": 0.99, "monitor": "test/acc", "epoch": None}


def test_the_compile_time_is_the_first_steps_excess_over_the_steady_step():
    from types import SimpleNamespace

    hook = TimeToTarget(0.9, compiled=True)
    trainer = SimpleNamespace(state=SimpleNamespace(sessions=[{}]))
    hook.step_times = [12.5, 0.5, 0.4, 0.6, 0.5, 0.5, 0.7]  # the first step compiled for about 12 s
    hook.note_compile_time(trainer)
    assert trainer.state.sessions[-1]["compile_s"] == pytest.approx(12.0)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.target_acc=94"], "trainer.target_acc=94 must be an accuracy in (0, 1], e.g. 0.94"),
    (["trainer.target_acc=0"], "trainer.target_acc=0 must be an accuracy in (0, 1]"),
    (["trainer.stop_at_target=true"], "trainer.stop_at_target=true needs a target: set trainer.target_acc"),
])
def test_a_target_outside_0_1_is_one_line(overrides, message, tmp_path):
    assert message in build_error(overrides, tmp_path)
