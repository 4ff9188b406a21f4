"""The training state of a run: counters, the best record, the history and the running sums of an epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from cifarbench import distributed


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # micro-batches of the next epoch already taken (a stop can save mid-epoch)
    epoch_sums: dict | None = None  # running loss/correct/seen/elapsed of that partial epoch
    global_step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss
    train_time: float = 0.0  # seconds spent training, over all sessions
    train_samples: int = 0  # images behind train_time
    extra_passes: int = 0  # images passed forward and backward again within their step (SAM's second pass)
    best: dict = field(default_factory=dict)  # the epoch record that made best.pt
    history: list[dict] = field(default_factory=list)  # one record per epoch
    wall_time_s: float = 0.0  # wall-clock seconds of all sessions up to the last save
    sessions: list[dict] = field(default_factory=list)  # per session: wall_time_s, epochs and what it changed
    target: dict | None = None  # trainer.target_acc: when the monitored accuracy reached it (hooks.time_to_target)
    # The epoch's running [loss, correct, seen] at its last step-curve point: a resumed epoch's next point averages
    # over the same steps as an uninterrupted run's (hooks.progress).
    step_curve_from: list | None = None

    @property
    def end_of_run_step(self) -> int:
        """The TensorBoard step of what a finished run logs (SWA, hparams, confusion matrix): just after its last
        optimizer step, so that a resume (purging from its last step + 1) drops them with the rest of that end."""
        return self.global_step + 1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """A state saved by this cifarbench (cifarbench.compat.upgrade_last brings older ones up to date)."""
        for f in fields(self):
            if f.name not in state:
                raise KeyError(f"training state lacks {f.name!r}")
            setattr(self, f.name, state[f.name])


class EpochSums:
    """The running training loss, correct count and images of an epoch, kept on the device (float32 and int64:
    every device has them, MPS has no float64), with the step of the first non-finite loss: nothing here waits for
    the device until someone reads it. A stopped epoch's sums are saved (TrainState.epoch_sums) and continue."""

    def __init__(self, device: torch.device, saved: dict | None = None):
        saved = saved or {"loss": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0}
        self.device, self.elapsed_before, self.seen_before = device, float(saved["elapsed"]), int(saved["seen"])
        self.extra_before = self.extra_passes = int(saved.get("extra_passes", 0))  # this rank's, like seen
        self.loss = torch.tensor(saved["loss"], dtype=torch.float32, device=device)
        self.correct = torch.tensor(saved["correct"], dtype=torch.int64, device=device)
        self.seen = int(saved["seen"])
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, step: int, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss += loss * count
        self.correct += correct
        self.seen += count
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)

    def read(self) -> tuple[float, int, int]:
        """(loss sum, correct, seen) of this rank: one wait for the device."""
        return float(self.loss), int(self.correct), self.seen

    def first_nonfinite_step(self) -> int:
        """The first step with a non-finite loss on any rank (-1: none); every rank must call it at the same step."""
        return int(distributed.all_reduce_max(self.first_bad_step.clone()))

    def totals(self) -> tuple[float, int, int]:
        """(loss sum, correct, seen) over all ranks."""
        loss = float(distributed.all_reduce_sum(self.loss.clone()))
        counts = distributed.all_reduce_sum(torch.stack([self.correct, torch.tensor(self.seen, device=self.device)]))
        correct, seen = (int(c) for c in counts.tolist())
        return loss, correct, seen

    def saved(self, elapsed: float) -> dict:
        loss, correct, seen = self.read()
        return {"loss": loss, "correct": correct, "seen": seen, "elapsed": elapsed, "extra_passes": self.extra_passes}
