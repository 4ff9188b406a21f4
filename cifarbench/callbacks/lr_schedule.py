"""The LR schedule as a hook: the first built-in hook of every run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cifarbench.engine.hooks import Callback

if TYPE_CHECKING:
    from torch import Tensor


class LRSchedule(Callback):
    """Built in, the first hook of every run (`trainer.hooks["lr_schedule"]`): steps the run's LR schedule after each
    optimizer step. A callback that sets the learning rate itself (SWA, once it has started) calls `hold()` from its
    own `on_epoch_start`, which runs after this one's, and the schedule stays where it is for that epoch. Its
    position is the `scheduler` part of last.pt, not a callback state."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.held = False

    def hold(self) -> None:
        self.held = True

    def on_epoch_start(self, trainer: Any) -> None:
        self.held = False

    def on_optimizer_step(self, trainer: Any, images: Tensor) -> None:
        if not self.held:
            self.scheduler.step()
