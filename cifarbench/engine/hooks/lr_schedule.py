"""The optimiser's side of the loop as hooks: the LR schedule, stepped after each optimizer step, and the training
windows of param groups (a group that trains for its first N epochs only)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.optim.param_groups import apply_training_windows

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

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self.held = False

    def on_optimizer_step(self, trainer: TrainerView, images: Tensor) -> None:
        if self.held:
            return
        with warnings.catch_warnings():
            # A step the GradScaler skipped (inf/NaN gradients: the first steps of most fp16 runs) still advances the
            # schedule, as in PyTorch's AMP recipe; torch warns then that the schedule stepped before the optimizer.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()


class TrainingWindows(Callback):
    """Built in (`trainer.hooks["training_windows"]`): at each epoch start, a param group whose `train_epochs` have
    passed stops training (requires_grad off, lr 0); see cifarbench.optim.param_groups. The loop then wraps the model
    in DDP anew, since the set of trainable parameters changed."""

    def on_epoch_start(self, trainer: TrainerView) -> None:
        apply_training_windows(trainer.optimizer, trainer.state.epoch)
