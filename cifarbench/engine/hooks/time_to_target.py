"""Time-to-target as a built-in hook (`trainer.hooks["time_to_target"]`): with `trainer.target_acc`, the run records
when its monitored accuracy first reaches the target (the epoch, the optimizer step, the training seconds with the
compile time kept apart, the wall seconds), the way the speed records are measured (time to 94%); with
`trainer.stop_at_target=true` it also ends the run there, with a clean last.pt and the usual final test."""

from __future__ import annotations

import logging
import statistics
import time

from cifarbench.engine.hooks import Callback, TrainerView

log = logging.getLogger("cifarbench")
COMPILE_PROBE_STEPS = 6  # steps after the first whose median is the steady step time


class TimeToTarget(Callback):
    """The record lives in the training state (`state.target`), so a resumed run keeps it and a run that stopped at
    its target and is started again ends at once."""

    def __init__(self, target_acc: float | None = None, stop_at_target: bool = False, compiled: bool = False):
        self.target = None if target_acc is None else float(target_acc)
        self.stop_at_target = bool(stop_at_target)
        self.compiled = compiled
        self.step_times: list[float] = []
        self.last_step: float | None = None

    def on_fit_start(self, trainer: TrainerView) -> None:
        state = trainer.state
        if self.target is None:
            return
        if state.target is None or state.target.get("target") != self.target:
            # Not reached (yet): metrics.json says so, rather than leaving the column empty.
            state.target = {"target": self.target, "monitor": trainer.monitor, "epoch": None}
        elif self.stop_at_target and state.target.get("epoch") is not None:
            trainer.request_stop(f"the target {self.target:g} was reached in epoch {state.target['epoch']}")

    def on_epoch_start(self, trainer: TrainerView) -> None:
        if self.compiled and len(self.step_times) <= COMPILE_PROBE_STEPS:
            self.step_times, self.last_step = [], time.perf_counter()

    def on_optimizer_step(self, trainer: TrainerView, images) -> None:
        if self.last_step is not None and len(self.step_times) <= COMPILE_PROBE_STEPS:
            now = time.perf_counter()
            self.step_times.append(now - self.last_step)
            self.last_step = now
            if len(self.step_times) > COMPILE_PROBE_STEPS:
                self.note_compile_time(trainer)

    def note_compile_time(self, trainer: TrainerView) -> None:
        """torch.compile's cost in this session: the first step's excess over the steady step time (a session
        that resumes compiles again, so each session has its own)."""
        first, steady = self.step_times[0], statistics.median(self.step_times[1:])
        trainer.state.sessions[-1]["compile_s"] = max(first - steady, 0.0)
        self.last_step = None

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        state = trainer.state
        if self.target is None or state.target.get("epoch") is not None:
            return
        value = record.get(trainer.monitor)
        if value is None or not value >= self.target:
            return
        compile_s = sum(session.get("compile_s", 0.0) for session in state.sessions)
        state.target = {"target": self.target, "monitor": trainer.monitor, "value": value, "epoch": state.epoch,
                        "step": state.global_step, "train_s": state.train_time - compile_s, "compile_s": compile_s,
                        "wall_s": trainer.wall_time_before + trainer.session_time()}
        log.info("reached %s >= %g in epoch %d (step %d) after %.1f s of training (+ %.1f s compiling)",
                 trainer.monitor, self.target, state.epoch, state.global_step, state.target["train_s"], compile_s)
        if self.stop_at_target:
            trainer.request_stop(f"{trainer.monitor} reached the target {self.target:g} in epoch {state.epoch}")
