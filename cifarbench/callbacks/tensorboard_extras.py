"""TensorBoard beyond the scalars, as a callback that every run has by default (conf/train.yaml). The config text
and the HPARAMS table come from the TensorBoard logger itself (cifarbench.loggers.tensorboard.TensorBoardLogger)."""

from __future__ import annotations

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.loggers.tensorboard import log_confusion_matrix, log_image_grid


class TensorBoardExtras(Callback):
    """What a person reviewing runs looks at beyond the scalars: the first training batch with its normalisation undone
    (IMAGES), the best model's confusion matrix and per-class accuracy. Rank 0 only, like every TensorBoard event;
    nothing without logger=tensorboard."""

    def __init__(self, samples: int = 64):
        self.samples = int(samples)

    def on_optimizer_step(self, trainer: TrainerView, images) -> None:
        if trainer.log.writer is None or trainer.state.global_step != 1:
            return
        import torch

        shape = (1, -1, 1, 1)
        mean = torch.tensor(trainer.data.mean, device=images.device).view(shape)
        std = torch.tensor(trainer.data.std, device=images.device).view(shape)
        log_image_grid(trainer.log.writer, images[: self.samples].float() * std + mean, step=0)

    def on_fit_end(self, trainer: TrainerView, result: dict, test: dict | None) -> None:
        writer = trainer.log.writer
        if writer is None:
            return
        log_confusion_matrix(writer, test["confusion"], list(trainer.data.classes), step=trainer.state.end_of_run_step)

