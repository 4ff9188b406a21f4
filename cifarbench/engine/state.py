"""The training state of a run: counters, the best record, the history and the running sums of a stopped epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # micro-batches of the next epoch already taken (a stop can save mid-epoch)
    epoch_sums: dict | None = None  # running loss/correct/seen/elapsed of that partial epoch
    global_step: int = 0  # optimizer steps taken
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss
    train_time: float = 0.0  # seconds spent training, over all sessions
    train_samples: int = 0  # images behind train_time
    best: dict = field(default_factory=dict)  # the epoch record that made best.pt
    history: list[dict] = field(default_factory=list)  # one record per epoch
    # Added after last.pt layout 1, so a checkpoint may lack them (they then keep these defaults).
    wall_time_s: float = 0.0  # wall-clock seconds of all sessions up to the last save
    sessions: list[dict] = field(default_factory=list)  # per session: wall_time_s, epochs and what it changed

    @property
    def end_of_run_step(self) -> int:
        """The TensorBoard step of what a finished run logs (SWA, hparams, confusion matrix): just after its last
        optimizer step, so that a resume (purging from its last step + 1) drops them with the rest of that end."""
        return self.global_step + 1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])
            elif f.name not in LATER_FIELDS:
                raise KeyError(f"training state lacks {f.name!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The fields every saved state has (layout 1 on)."""
        return tuple(f.name for f in fields(cls) if f.name not in LATER_FIELDS)


LATER_FIELDS = ("wall_time_s", "sessions")
