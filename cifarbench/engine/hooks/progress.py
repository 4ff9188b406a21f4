"""What a person follows while a run trains, as a built-in hook (`trainer.hooks["progress"]`, the last one): the
tqdm bars in a terminal, a plain log line at a steady interval everywhere else (nohup, SLURM logs, CI), the
TensorBoard scalars (per step and per epoch), one line per epoch and a summary at the end.

Every running number comes from one read of the loop's device-side sums (`BatchEnd.read`), made at the steps where
the loop reads them anyway (every `trainer.log_every_n_steps` optimizer steps) or, off a terminal, when
`trainer.progress_every_s` has passed without a line: that adds at most one read per interval, never one per step.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from cifarbench.engine.hooks import BatchEnd, Callback, TrainerView
from cifarbench.engine.hooks.evaluation import partial_note

log = logging.getLogger("cifarbench")


class Progress(Callback):
    def __init__(self, every_s: float = 30.0):
        self.every_s = float(every_s)
        self.epochs_bar = self.bar = None

    def on_fit_start(self, trainer: TrainerView) -> None:
        self.plain = trainer.log.enabled and not trainer.log.show_bars
        self.epochs_bar = trainer.log.bar(total=trainer.epochs, initial=trainer.state.epoch, desc="epochs",
                                          position=0, leave=True)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        state = trainer.state
        self.bar = trainer.log.bar(total=trainer.epoch_steps(), initial=state.step_in_epoch,
                                   desc=f"epoch {state.epoch + 1}", position=1)
        self.last_line = self.session_start = time.perf_counter()
        self.first_step = state.step_in_epoch  # a resumed epoch starts part way
        # The sums at the previous step-curve point: each point is the mean over the steps since then. A resumed
        # epoch continues from the point before its stop, as the uninterrupted run would.
        if state.step_in_epoch == 0 or state.step_curve_from is None:
            state.step_curve_from = [0.0, 0, 0]
        self.previous = tuple(state.step_curve_from)

    def on_train_batch_end(self, trainer: TrainerView, batch: BatchEnd) -> None:
        if self.bar is None:
            return  # an epoch trained without on_epoch_start (a test driving train_epoch alone)
        self.bar.update(1)
        now = time.perf_counter()
        line_due = self.plain and now - self.last_line >= self.every_s
        if not (batch.log_step or line_due):
            return
        loss_total, correct_total, seen = batch.read()
        img_s = seen / max(now - batch.started, 1e-9)
        loss, acc = loss_total / max(seen, 1), correct_total / max(seen, 1)
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", lr=f"{batch.lr:.4g}", img_s=f"{img_s:.0f}")
        state = trainer.state
        if self.plain and batch.step < batch.steps:
            per_step = (now - self.session_start) / max(batch.step - self.first_step, 1)
            eta = timedelta(seconds=round(per_step * (batch.steps - batch.step)))
            log.info("epoch %d/%d step %d/%d  loss %.4f acc %.4f  lr %.4g  %.0f img/s  epoch ETA %s",
                     state.epoch + 1, trainer.epochs, batch.step, batch.steps, loss, acc, batch.lr, img_s, eta)
            self.last_line = now
        # The loop's log steps: every n optimizer steps and the epoch's last one (an epoch shorter than n steps still
        # has its step curve), never inside an accumulation group.
        if batch.log_step and seen > self.previous[2]:
            last_loss, last_correct, last_seen = self.previous
            count = seen - last_seen
            trainer.log.scalars({
                "train/loss_step": (loss_total - last_loss) / count,
                "train/acc_step": (correct_total - last_correct) / count,
                "lr_step": batch.lr,
            }, state.global_step)
            self.previous = (loss_total, correct_total, seen)
            state.step_curve_from = list(self.previous)

    def on_train_epoch_end(self, trainer: TrainerView) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        state, monitor = trainer.state, trainer.monitor
        trainer.log.scalars({**record, "best/acc": state.best.get(monitor), "best/epoch": state.best.get("epoch")},
                            state.global_step)
        trainer.log.flush()  # the epoch's events are on disk before its last.pt (the next hook but one)
        self.epochs_bar.update(1)
        monitored = f"{record[monitor]:.4f}" if monitor in record else "(not evaluated)"
        # "<split>/images" (or "<split>_ema/images", ...) is in the record when the evaluation saw part of the split
        monitored += partial_note(trainer, trainer.monitor_split, record.get(f"{monitor.split('/')[0]}/images"))
        passes = record.get("throughput/passes_per_image", 1.0)
        log.info("epoch %d/%d  train loss %.4f acc %.4f  %s %s  lr %.4g  %.0f img/s%s", record["epoch"],
                 trainer.epochs, record["train/loss"], record["train/acc"], monitor, monitored, record["lr"],
                 record["throughput/img_per_s"], f" ({passes:.2f} forward/backward passes each)" if passes > 1 else "")

    def on_train_end(self, trainer: TrainerView) -> None:
        self.epochs_bar.close()

    def on_fit_end(self, trainer: TrainerView, result: dict, test: dict | None) -> None:
        """The end of a run in a few lines: the best epoch, the test result, where the weights are, how to look;
        the loggers get the run's hparams with its final metrics, and best.pt (those that store it)."""
        if not trainer.runtime.dist.is_main:
            return
        from cifarbench.loggers.tensorboard import hparams_metrics

        trainer.log.summary(hparams_metrics(result), trainer.state.end_of_run_step)
        trainer.log.artifact(trainer.run_dir / "checkpoints" / "best.pt", "checkpoint")
        best, monitor, run_dir = result.get("best") or {}, result["monitor"], trainer.run_dir.resolve()
        if best:
            log.info("best %s %.4f at epoch %s of %s", monitor, best.get(monitor, float("nan")), best.get("epoch"),
                     result["epochs"])
        if test:
            log.info("test: acc %.4f, top-5 %.4f, loss %.4f%s", test["acc"], test["top5"], test["loss"],
                     partial_note(trainer, "test", test["count"]) if test.get("partial") else "")
        if trainer.checkpoints.enabled and (run_dir / "checkpoints" / "best.pt").is_file():
            log.info("best weights: %s", run_dir / "checkpoints" / "best.pt")
        if "tensorboard" in trainer.log.loggers:
            log.info("curves: tensorboard --logdir %s", run_dir)
