"""cifarbench.engine.stopping: signals that stop a run after a step, and handlers installed before ours."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from cifarbench import checkpoint
from cifarbench.engine.trainer import TrainingInterrupted
from tests.helpers.compare import assert_same_run
from tests.helpers.runs import (
    SMALL,
    reference_run,
    signal_after_step,
    stopped_in_epoch_2,
    toy_trainer,
)


# ------------------------------------------------------------------------------------------ preemption signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_a_preemption_signal_saves_then_hands_over_to_the_handler_installed_before(sig, tmp_path, toy_conf,
                                                                                    monkeypatch):
    """submitit installs its requeue handler (SIGUSR2, or SUBMITIT_PREEMPT_SIGNAL) before the task runs; ours must
    save last.pt and metrics.json first, then call it, so the job is requeued and resumes from that save."""
    run_dir = tmp_path / "run"
    calls = []

    def earlier_handler(signum, frame):
        calls.append((signum, (run_dir / "checkpoints" / "last.pt").is_file(),
                      json.loads((run_dir / "metrics.json").read_text())["status"]))

    previous = signal.signal(sig, earlier_handler)
    try:
        signal_after_step(monkeypatch, sig, epoch=0, step=3)
        with pytest.raises(TrainingInterrupted, match=sig.name):
            toy_trainer(toy_conf, run_dir, ["trainer.epochs=2"]).fit()
        assert signal.getsignal(sig) is earlier_handler, "the earlier handler was not put back"
    finally:
        signal.signal(sig, previous)
    assert calls == [(sig, True, "interrupted")]
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (0, 3)


def test_a_requeueing_handler_that_exits_gets_the_last_word(tmp_path, toy_conf, monkeypatch):
    """submitit's handler requeues and calls sys.exit: its exit wins over cifarbench's EXIT_INTERRUPTED."""
    def requeue_and_exit(signum, frame):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        signal_after_step(monkeypatch, signal.SIGUSR2, epoch=0, step=2)
        with pytest.raises(SystemExit) as exited:
            toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=2"]).fit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exited.value.code == -1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["step_in_epoch"] == 2


def test_two_sigterms_50_ms_apart_still_save_last_pt(tmp_path, monkeypatch):
    """srun + torchrun: SLURM signals every process of the step and torchrun forwards its own SIGTERM, so a worker
    gets two signals close together. They are one stop request: the run still stops cleanly after the step and
    saves a mid-epoch last.pt, which resumes to the uninterrupted run's weights."""
    overrides = SMALL + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto"]
    reference = reference_run(overrides, tmp_path / "reference")

    def send_two_sigterms():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run", send_two_sigterms, "SIGTERM")
    reference_run(overrides, run_dir)
    assert_same_run(reference, run_dir, epochs=2)


def test_ctrl_c_stops_like_sigterm_and_the_rerun_continues_without_duplicate_curves(tmp_path, monkeypatch):
    """SIGINT (Ctrl-C) at step 2 of epoch 2: not a KeyboardInterrupt traceback but a clean stop, last.pt saved and
    metrics.json "interrupted" with how to resume; the rerun continues to the uninterrupted run's weights and
    TensorBoard curves (each step once, though the folder now holds two event files)."""
    overrides = SMALL + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto",
                         "trainer.log_every_n_steps=1"]
    reference = reference_run(overrides, tmp_path / "reference")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run_dir = stopped_in_epoch_2(monkeypatch, overrides, tmp_path / "run",
                                 lambda: os.kill(os.getpid(), signal.SIGINT), "SIGINT")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Python's Ctrl-C handler was not put back"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "trainer.resume=auto" in metrics["error"]
    reference_run(overrides, run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert_same_run(reference, run_dir, epochs=2)  # curves included: a repeated step fails it


def test_a_signal_during_the_final_test_lets_the_run_complete(tmp_path, monkeypatch, caplog):
    """SIGTERM while the best model is tested: the handler is still installed, so the process is not killed with
    metrics.json at "running"; the test finishes and the run is complete."""
    from cifarbench.engine.hooks.evaluation import EpochEvaluation

    original = EpochEvaluation.test

    def signalled_test(self, trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, trainer)

    monkeypatch.setattr(EpochEvaluation, "test", signalled_test)
    caplog.set_level("WARNING", logger="cifarbench")
    result = reference_run(SMALL + ["trainer.epochs=1"], tmp_path / "run")
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test"]["acc"] is not None
    assert any("SIGTERM arrived after the last training step" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
