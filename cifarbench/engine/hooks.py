"""Callbacks: how a training trick joins a run without editing the loop.

A callback is configured like everything else: `conf/callbacks/<name>.yaml` holds `<name>: {_target_: ...}`, so
`+callbacks=ema` (or an experiment file) adds one and `callbacks.ema.decay=0.99` changes it. The trainer builds
every entry of `cfg.callbacks`, calls `setup(trainer)` once its model and optimizer exist, then the hooks below.

Callbacks get the trainer itself as their argument and use its public attributes (`cfg`, `runtime`, `model`,
`optimizer`, `loaders`, `data`, `state`, `log`, `hooks`, `monitor`, `monitor_split`, `evaluate_split`); they never
import the loop module. `trainer.hooks` holds every hook in calling order, the built-in ones first: `lr_schedule`,
`evaluation` and `best_checkpoint` (cifarbench.callbacks.evaluation; `hooks["best_checkpoint"].update(...)` offers
best.pt a candidate).
A callback with `state_dict`/`load_state_dict` is saved in last.pt under its name and restored
on resume, without any change to the checkpoint code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cifarbench.config import build
from cifarbench.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn


class Callback:
    # With True, the models of eval_models() are the ones monitored and saved as best.pt (EMA does this).
    selects_best: bool = False

    def setup(self, trainer: Any) -> None:
        """The model, optimizer and loaders exist; build what the callback needs (before a resume loads state)."""

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first epoch of this session (after a resume, its state is already restored)."""

    def on_epoch_start(self, trainer: Any) -> None:
        """Before the training steps of epoch trainer.state.epoch + 1."""

    def on_optimizer_step(self, trainer: Any, images: Tensor) -> None:
        """After each optimizer step; `images` is the step's last micro-batch as the loader served it (augmented,
        normalised, before any mixing)."""

    def on_train_epoch_end(self, trainer: Any) -> None:
        """After the training steps of an epoch (trainer.state.epoch counts it), before it is evaluated."""

    def on_epoch_end(self, trainer: Any, record: dict) -> None:
        """After on_train_epoch_end, with the epoch's record (what TensorBoard and the history get): the built-in
        `evaluation` hook adds the monitored split's metrics to it, then `best_checkpoint` updates best.pt, then the
        callbacks see both."""

    def eval_models(self) -> dict[str, nn.Module]:
        """Extra models evaluated beside the trained one each epoch, by name (their metrics go to <split>_<name>/)."""
        return {}

    def on_train_end(self, trainer: Any) -> None:
        """After the last epoch, before the best model is tested."""

    def on_fit_end(self, trainer: Any, result: dict, test: dict | None) -> None:
        """After the test, with the metrics.json payload and the test metrics (confusion matrix included)."""

    def metrics(self) -> dict:
        """Entries this callback adds to metrics.json."""
        return {}


BUILT_IN = ("lr_schedule", "evaluation", "best_checkpoint")


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
