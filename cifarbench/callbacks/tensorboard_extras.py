"""TensorBoard beyond the scalars, as a callback that every run has by default (conf/train.yaml)."""

from __future__ import annotations

from omegaconf import OmegaConf

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.loggers.tensorboard import (
    hparams_from_run,
    hparams_metrics,
    log_config_text,
    log_confusion_matrix,
    log_hparams,
    log_image_grid,
)


class TensorBoardExtras(Callback):
    """What a person reviewing runs looks at beyond the scalars: the resolved config (TEXT), the first training batch
    with its normalisation undone (IMAGES), the best model's confusion matrix and per-class accuracy, and the
    run's hparams with its final metrics (HPARAMS). Rank 0 only, like every TensorBoard event."""

    def __init__(self, samples: int = 64):
        self.samples = int(samples)

    def on_fit_start(self, trainer: TrainerView) -> None:
        if trainer.log.writer is not None and trainer.state.epoch == 0:
            log_config_text(trainer.log.writer, OmegaConf.to_yaml(trainer.cfg, resolve=True))

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
        step = trainer.state.end_of_run_step
        log_confusion_matrix(writer, test["confusion"], list(trainer.data.classes), step=step)
        info = trainer.run_info
        hparams = hparams_from_run(trainer.cfg, info.get("overrides", []), info.get("choices", {}))
        log_hparams(writer, hparams, hparams_metrics(result), step=step)

