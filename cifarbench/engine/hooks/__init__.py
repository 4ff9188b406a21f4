"""Hooks: how the schedule, evaluation, checkpoints, logging and every training trick join the loop.

Everything the loop does besides the training steps is a hook, an object with some of the methods of `Callback`
below. The trainer installs its built-in hooks (this package's modules), then the config's callbacks, and calls
them in that order (`trainer.hooks`):

    lr_schedule                     engine.hooks.lr_schedule   the schedule steps after each optimizer step
    evaluation, best_checkpoint     engine.hooks.evaluation    the monitored split per epoch, best.pt, the final test
    time_to_target                  engine.hooks.time_to_target  when trainer.target_acc was first reached
    <cfg.callbacks>                 cifarbench.callbacks       EMA, SWA, lookahead, TTA, TensorBoard extras, yours
    training_windows                engine.hooks.lr_schedule   param groups that train for their first N epochs
    progress                        engine.hooks.progress      bars, log lines, TensorBoard scalars
    last_checkpoint                 engine.hooks.evaluation    last.pt every trainer.checkpoint_every_n_epochs
    metrics_file                    engine.hooks.metrics_file  metrics.json after every epoch and at the end

A callback is configured like everything else: `conf/callbacks/<name>.yaml` holds `<name>: {_target_: ...}`, so
`+callbacks=ema` adds one and `callbacks.ema.decay=0.99` changes it. A callback with `state_dict`/`load_state_dict`
is saved in last.pt under `checkpoint["callbacks"][name]` and restored on resume. Hooks get the trainer as a
`TrainerView`: the attributes below are the whole API a callback may rely on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cifarbench.config import build
from cifarbench.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import Tensor, nn

    from cifarbench.checkpoint.checkpointer import Checkpointer
    from cifarbench.data.loaders import Loaders
    from cifarbench.data.splits import ImageSplits
    from cifarbench.engine.runtime import Runtime
    from cifarbench.engine.state import TrainState
    from cifarbench.loggers.run_log import RunLog


class TrainerView(Protocol):
    """What hooks may read and use of the trainer (cifarbench.engine.trainer.Trainer implements it)."""

    cfg: DictConfig  # the run's resolved config
    run_dir: Path
    run_info: dict  # Hydra's overrides and choices of this run
    runtime: Runtime  # dist (rank, world size), device, precision
    data: ImageSplits  # train/val/test images, classes, mean/std
    loaders: Loaders  # train/val/test loaders
    model: nn.Module  # the plain module (never the DDP or compiled wrapper)
    optimizer: torch.optim.Optimizer  # or an OptimizerSet (cifarbench.optim.optimizer_sets)
    scheduler: object  # the LR schedule (a torch LRScheduler or a SchedulerSet)
    state: TrainState  # epoch, steps, best record, history
    log: RunLog  # TensorBoard writer (None off rank 0), bars, metrics.json
    checkpoints: Checkpointer  # best.pt and last.pt
    hooks: dict[str, Callback]  # every hook in calling order, the built-in ones by name
    callbacks: dict[str, Callback]  # the config's callbacks only
    model_name: str
    epochs: int  # epochs planned (a fractional trainer.epochs rounded up)
    steps_per_epoch: int  # micro-batches
    total_steps: int  # micro-batches of the whole run
    wall_time_before: float  # seconds of the sessions before this one
    params: int
    gflops: float
    monitor: str  # the metric best.pt follows, e.g. "val/acc" or "test_ema/acc"
    monitor_split: str  # "val", or "test" without a validation split
    stop_reason: str | None  # why a hook ended the run early (request_stop), or None

    @property
    def device(self) -> torch.device: ...

    def evaluate_split(self, split: str, model: nn.Module | None = None, predict=None) -> dict: ...

    def save_last(self) -> None: ...

    def request_stop(self, reason: str) -> None: ...

    def session_time(self) -> float: ...

    def epoch_steps(self) -> int: ...


class Callback:
    """The hooks, in the order the loop calls them. Override the ones you need; each gets the trainer first."""

    def setup(self, trainer: TrainerView) -> None:
        """The model, optimizer and loaders exist; build what the callback needs (before a resume loads state),
        and tell the built-in hooks what they should do for it: `hooks["evaluation"].add_model(name, model)` evaluates
        another model each epoch, `hooks["best_checkpoint"].select(name, model)` monitors it for best.pt."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        """Before the first epoch of this session (after a resume, its state is already restored)."""

    def on_epoch_start(self, trainer: TrainerView) -> None:
        """Before the training steps of epoch trainer.state.epoch + 1."""

    def on_train_batch_start(self, trainer: TrainerView, images: Tensor, labels: Tensor):
        """Before each micro-batch's step, with the batch as the loader served it. Return (images, labels) to train
        on another batch instead (data selection keeps part of it), or None to leave it as it is."""
        return None

    def on_optimizer_step(self, trainer: TrainerView, images: Tensor) -> None:
        """After each optimizer step; `images` is the step's last micro-batch as the loader served it (augmented,
        normalised, before any mixing)."""

    def on_train_batch_end(self, trainer: TrainerView, batch: BatchEnd) -> None:
        """After each micro-batch. `batch.read()` gives the epoch's running loss/accuracy (one device sync, shared
        by every hook that asks at this step); `batch.log_step` marks the micro-batches where the loop reads them
        anyway: those that end every n-th optimizer step (trainer.log_every_n_steps) and the epoch's last."""

    def on_train_epoch_end(self, trainer: TrainerView) -> None:
        """After the training steps of an epoch (trainer.state.epoch counts it), before it is evaluated."""

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        """With the epoch's record (in trainer.state.history; what TensorBoard and metrics.json get): `evaluation`
        adds the monitored split's metrics to it, `best_checkpoint` updates best.pt, then the callbacks see both,
        then TensorBoard and the log get the epoch, then last.pt and metrics.json are written."""

    def on_interrupt(self, trainer: TrainerView, error: Exception) -> None:
        """A stop signal ended the session; last.pt is saved. Record what must outlive the process."""

    def on_train_end(self, trainer: TrainerView) -> None:
        """After the last epoch, before the best model is tested."""

    def on_test_end(self, trainer: TrainerView, test: dict | None) -> None:
        """After the test of the best model (None on ranks other than 0)."""

    def on_fit_end(self, trainer: TrainerView, result: dict, test: dict | None) -> None:
        """The end of the run, with the metrics.json payload and the test metrics (confusion matrix included)."""

    def metrics(self) -> dict:
        """Entries this callback adds to metrics.json."""
        return {}


class BatchEnd:
    """One micro-batch's end as hooks see it: its position, and the epoch's running sums on request."""

    def __init__(self, step: int, steps: int, log_step: bool, lr: float, started: float, read):
        self.step, self.steps, self.log_step, self.lr = step, steps, log_step, lr
        self.started = started  # time.perf_counter() of the epoch's start (earlier by a resumed epoch's elapsed)
        self._read, self._values = read, None

    def read(self) -> tuple[float, int, int]:
        """(loss sum, correct, seen) of this rank's epoch so far; the first call waits for the device."""
        if self._values is None:
            self._values = self._read()
        return self._values


# The names of the trainer's own hooks; a config callback may not take one.
BUILT_IN = ("lr_schedule", "training_windows", "evaluation", "best_checkpoint", "time_to_target", "last_checkpoint",
            "metrics_file", "progress")


def build_callbacks(node: Mapping | None) -> dict[str, Callback]:
    """`cfg.callbacks` (name -> config with a `_target_`) as built callbacks; a null entry switches one off."""
    callbacks = {}
    for name, spec in (node or {}).items():
        if spec is None:
            continue
        if name in BUILT_IN:
            raise ConfigError(f"callbacks.{name} is built in and installed by the trainer; give yours another name")
        callback = build(spec)
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"callbacks.{name}: {spec.get('_target_')} is not a cifarbench.engine.hooks.Callback"
            )
        callbacks[str(name)] = callback
    return callbacks


def stateful(callbacks: Mapping[str, Callback]) -> dict[str, Callback]:
    return {name: cb for name, cb in callbacks.items() if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict")}
