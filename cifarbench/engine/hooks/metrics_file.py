"""metrics.json, the run's record for reports and sweeps, as a built-in hook (`trainer.hooks["metrics_file"]`):
rewritten after every epoch ("running"), when a stop signal ends the session ("interrupted") and after the test
("completed"). cifarbench.reporting reads it; a failed run's is written by cifarbench.cli.train."""

from __future__ import annotations

from cifarbench.compat import METRICS_KEPT
from cifarbench.engine.hooks import Callback, TrainerView


def metrics_payload(trainer: TrainerView, *, status: str, test: dict | None = None, error: str | None = None) -> dict:
    state, cfg, info = trainer.state, trainer.cfg, trainer.run_info
    evaluation = trainer.hooks["evaluation"]
    session_time = trainer.session_time()
    payload = {
        **METRICS_KEPT,
        "status": status,
        "error": error,
        "model": trainer.model_name,
        "dataset": cfg.dataset.name,
        "overrides": info.get("overrides", []),
        "choices": info.get("choices", {}),
        "params": trainer.params,
        "gflops": trainer.gflops,
        "epochs": state.epoch,
        "epochs_planned": cfg.trainer.epochs,
        "monitor": trainer.monitor,
        "best": state.best,
        # "selected" says which checkpoint "test" measured and how it was picked; "final_test" is the last epoch's
        # weights on the test set. On the test set itself, selection flatters: compare final_test there.
        "selected": {"epoch": state.best.get("epoch"), "monitor": trainer.monitor,
                     "on_test_set": trainer.monitor_split == "test", "test_views": evaluation.test_views},
        "final": state.history[-1] if state.history else {},
        # "images" and "partial": a test cut short by trainer.limit_eval_batches says so wherever it is read.
        "test": {"loss": test["loss"], "acc": test["acc"], "top5": test["top5"], "images": test.get("count"),
                 "partial": bool(test.get("partial"))} if test else None,
        "final_test": evaluation.final_test if test else None,
        "time_to_target": state.target,  # None without trainer.target_acc; "epoch": None while not reached
        "stopped_early": trainer.stop_reason,
        "per_class_acc": dict(zip(trainer.data.classes, test["per_class_acc"])) if test else None,
        "wall_time_s": trainer.wall_time_before + session_time,  # all sessions of the run
        "session_wall_time_s": session_time,
        "sessions": state.sessions,
        # Training images per second; an image SAM passes twice counts once, so `passes_per_image` says what one
        # cost and pass_img_per_s compares the hardware's pace across optimizers.
        "img_per_s": state.train_samples / state.train_time if state.train_time else None,
        "passes_per_image": 1 + state.extra_passes / state.train_samples if state.train_samples else None,
        "pass_img_per_s": ((state.train_samples + state.extra_passes) / state.train_time if state.train_time
                           else None),
        "skipped_steps": state.skipped_steps,
        "device": str(trainer.device),
        "precision": trainer.runtime.precision,  # what ran: trainer.precision=auto resolves per device
        "history": state.history,
    }
    for callback in trainer.callbacks.values():
        payload.update(callback.metrics())
    return payload


class MetricsFile(Callback):
    def __init__(self):
        self.result: dict | None = None  # the completed run's payload, which fit() returns

    def write(self, trainer: TrainerView, **kwargs) -> dict:
        payload = metrics_payload(trainer, **kwargs)
        trainer.log.write_metrics(payload)
        return payload

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        self.write(trainer, status="running")

    def on_interrupt(self, trainer: TrainerView, error: Exception) -> None:
        self.write(trainer, status="interrupted", error=str(error))

    def on_test_end(self, trainer: TrainerView, test: dict | None) -> None:
        self.result = self.write(trainer, status="completed", test=test)
