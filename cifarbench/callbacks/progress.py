"""What a person follows while an epoch trains: the running numbers on the tqdm bar in a terminal, a plain log line at
a steady interval everywhere else (nohup, SLURM logs, CI), and the step-resolution TensorBoard curves.

Every number shown here comes from one read of the loop's device-side running sums, made at the steps where the
loop reads them anyway (every `trainer.log_every_n_steps`) or, off a terminal, when `trainer.progress_every_s` has
passed without a line: that adds at most one read per interval, never one per step.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

log = logging.getLogger("cifarbench")


class EpochProgress:
    def __init__(self, trainer: Any, bar, steps: int, sums: dict, started: float):
        t = trainer.cfg.trainer
        self.trainer, self.bar, self.steps, self.started = trainer, bar, steps, started
        self.every_n, self.every_s = int(t.log_every_n_steps), float(t.progress_every_s)
        self.plain = trainer.log.enabled and not trainer.log.show_bars
        self.last_line = self.session_start = time.perf_counter()
        self.first_step = trainer.state.step_in_epoch  # a resumed epoch starts part way
        # The sums at the previous read: the TensorBoard points are means over the steps since then.
        self.previous = (float(sums["loss"]), int(sums["correct"]), int(sums["seen"]))

    def is_log_step(self, step: int) -> bool:
        """The steps where every rank reads the running sums (and checks them for NaN) together."""
        return step % self.every_n == 0 or step == self.steps

    def line_due(self) -> bool:
        return self.plain and time.perf_counter() - self.last_line >= self.every_s

    def report(self, step: int, loss_sum, correct, seen: int, lr: float) -> None:
        """Read the running sums once and show them: bar, plain line, TensorBoard."""
        loss_total, correct_total = float(loss_sum), int(correct)
        now = time.perf_counter()
        img_s = seen / max(now - self.started, 1e-9)
        loss, acc = loss_total / max(seen, 1), correct_total / max(seen, 1)
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", lr=f"{lr:.4g}", img_s=f"{img_s:.0f}")
        state, epochs = self.trainer.state, self.trainer.epochs
        if self.plain and (self.is_log_step(step) or now - self.last_line >= self.every_s) and step < self.steps:
            per_step = (now - self.session_start) / max(step - self.first_step, 1)
            eta = timedelta(seconds=round(per_step * (self.steps - step)))
            log.info("epoch %d/%d step %d/%d  loss %.4f acc %.4f  lr %.4g  %.0f img/s  epoch ETA %s",
                     state.epoch + 1, epochs, step, self.steps, loss, acc, lr, img_s, eta)
            self.last_line = now
        if step % self.every_n == 0 and seen > self.previous[2]:
            last_loss, last_correct, last_seen = self.previous
            count = seen - last_seen
            self.trainer.log.scalars({
                "train/loss_step": (loss_total - last_loss) / count,
                "train/acc_step": (correct_total - last_correct) / count,
                "lr_step": lr,
            }, state.global_step)
            self.previous = (loss_total, correct_total, seen)


def log_epoch(record: dict, epochs: int, monitor: str) -> None:
    monitored = f"{record[monitor]:.4f}" if monitor in record else "(not evaluated)"
    log.info("epoch %d/%d  train loss %.4f acc %.4f  %s %s  lr %.4g  %.0f img/s", record["epoch"], epochs,
             record["train/loss"], record["train/acc"], monitor, monitored, record["lr"],
             record["throughput/img_per_s"])


def log_summary(run_dir, result: dict, checkpoints_kept: bool) -> None:
    """The end of a run in a few lines: the best epoch, the test result, where the weights are, how to look."""
    best, test, monitor = result.get("best") or {}, result.get("test") or {}, result["monitor"]
    if best:
        log.info("best %s %.4f at epoch %s of %s", monitor, best.get(monitor, float("nan")), best.get("epoch"),
                 result["epochs"])
    if test:
        log.info("test: acc %.4f, top-5 %.4f, loss %.4f", test["acc"], test["top5"], test["loss"])
    best_pt = run_dir.resolve() / "checkpoints" / "best.pt"
    if checkpoints_kept and best_pt.is_file():
        log.info("best weights: %s", best_pt)
    log.info("curves: tensorboard --logdir %s", run_dir.resolve())
