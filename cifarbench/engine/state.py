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

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            setattr(self, f.name, state[f.name])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
