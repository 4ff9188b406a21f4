"""Stochastic Weight Averaging: a thin wrapper over ``torch.optim.swa_utils``.

Timeline, with 1-based epochs as in the trainer's history:

* epochs ``< start_epoch``: nothing happens; the trainer's own per-step scheduler drives the LR;
* end of epoch ``start_epoch``: the weights are averaged for the first time and SWALR is created;
  from then on ``controls_lr`` is True, and the callback holds the trainer's LR schedule hook every epoch;
* end of every later epoch: the weights are averaged again and SWALR steps (one step per epoch, annealing from the
  LR in use to ``swa_lr`` over ``anneal_epochs`` epochs, then holding it);
* after training: ``finalize(batches)`` recomputes the BatchNorm statistics of the averaged weights.

SWALR is created lazily because its constructor already writes an LR into the optimizer (with
``anneal_epochs=0`` it jumps straight to ``swa_lr``), which would clobber the main schedule before SWA starts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from cifarbench import distributed
from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.errors import ConfigError
from cifarbench.optim.sam import base_optimizer

log = logging.getLogger("cifarbench")


class SwaState:
    """Averaged weights (``AveragedModel``) and the SWA LR schedule (``SWALR``) of one run.

    Args:
        model: the model being trained (raw module). ``AveragedModel`` deep-copies it.
        optimizer: the optimizer whose LR SWALR takes over.
        swa_lr: the constant LR of the SWA phase (a float, applied to every param group).
        start_epoch: 1-based epoch whose end-of-epoch weights are the first ones averaged.
        anneal_epochs: epochs to move the LR from its current value to ``swa_lr``.
        anneal_strategy: "cos" or "linear".
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        swa_lr: float,
        start_epoch: int,
        anneal_epochs: int = 0,
        anneal_strategy: str = "cos",
    ) -> None:
        if swa_lr <= 0:
            raise ConfigError(f"swa.swa_lr must be > 0, got {swa_lr}")
        if start_epoch < 1:
            raise ConfigError(f"swa.start_epoch must be >= 1 (1-based epochs), got {start_epoch}")
        if anneal_epochs < 0:
            raise ConfigError(f"swa.anneal_epochs must be >= 0, got {anneal_epochs}")
        if anneal_strategy not in ("cos", "linear"):
            raise ConfigError(f"swa.anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.optimizer = optimizer
        self.swa_lr = float(swa_lr)
        self.start_epoch = int(start_epoch)
        self.anneal_epochs = int(anneal_epochs)
        self.anneal_strategy = anneal_strategy
        self._model = model
        self.averaged = AveragedModel(model)
        self.scheduler: SWALR | None = None

    @property
    def controls_lr(self) -> bool:
        """True once SWA has started: the trainer must then not step its own LR scheduler."""
        return self.scheduler is not None

    @property
    def num_averaged(self) -> int:
        return int(self.averaged.n_averaged.item())

    @property
    def module(self) -> nn.Module:
        """The averaged network itself (same keys as the trained model), for evaluation and checkpoints."""
        return self.averaged.module

    def _make_scheduler(self) -> SWALR:
        return SWALR(
            self.optimizer,
            swa_lr=self.swa_lr,
            anneal_epochs=self.anneal_epochs,
            anneal_strategy=self.anneal_strategy,
        )

    def after_epoch(self, epoch: int, model: nn.Module | None = None) -> bool:
        """Call at the end of every epoch (1-based). Returns whether the weights were averaged.

        ``model`` defaults to the module given at construction; pass it only if the trained object is another one.
        """
        if epoch < self.start_epoch:
            return False
        self.averaged.update_parameters(model if model is not None else self._model)
        if self.scheduler is None:
            self.scheduler = self._make_scheduler()
        with warnings.catch_warnings():
            # The optimizer stepped all epoch, but torch only sees steps taken after some scheduler wrapped
            # optimizer.step, so a freshly made SWALR can falsely warn "lr_scheduler.step() before optimizer.step()".
            warnings.filterwarnings(
                "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
            )
            self.scheduler.step()
        return True

    def finalize(self, batches: Iterable, device: torch.device | str | None = None) -> bool:
        """Recompute the averaged model's BatchNorm running statistics with one pass over ``batches``.

        ``batches`` yields image tensors or ``(images, labels, ...)`` tuples, normalised as in training (e.g. the
        train DeviceLoader). Returns False, doing nothing, if no weights were averaged (SWA never started).
        """
        if self.num_averaged == 0:
            return False
        with torch.no_grad():
            update_bn(_images_only(batches), self.averaged, device=device)
        return True

    def state_dict(self) -> dict:
        return {
            "averaged": self.averaged.state_dict(),  # includes n_averaged
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore averages and, if SWA had started, the SWALR position. Load the optimizer state too."""
        self.averaged.load_state_dict(state["averaged"])
        if state["scheduler"] is not None:
            self.scheduler = self._make_scheduler()
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.scheduler = None


def _images_only(batches: Iterable) -> Iterator[torch.Tensor]:
    # update_bn itself takes the first element of a tuple/list, but our loaders may yield other containers; being
    # explicit keeps labels out of the forward pass whatever the batch type.
    for batch in batches:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


class SwaCallback(Callback):
    """`+callbacks=swa`: stochastic weight averaging. From `start_epoch` (1-based) on, the weights are averaged at
    the end of every epoch and SWALR holds the learning rate; after the last epoch the BatchNorm statistics of the
    average are recomputed, it is evaluated (as <split>_swa/), and it becomes best.pt if it beats the best epoch."""

    def __init__(self, start_epoch: int = 161, lr: float = 0.05, anneal_epochs: int = 5, anneal_strategy: str = "cos"):
        self.options = dict(swa_lr=lr, start_epoch=start_epoch, anneal_epochs=anneal_epochs,
                            anneal_strategy=anneal_strategy)
        self.swa: SwaState | None = None
        self.record: dict | None = None

    def setup(self, trainer: TrainerView) -> None:
        optimizer = base_optimizer(trainer.optimizer)  # SWALR sets the lr of the optimizer SAM wraps
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("callbacks.swa takes over one optimizer's lr and this run has several (`optimizers`); "
                              "drop one of them")
        self.swa = SwaState(trainer.model, optimizer, **self.options)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        # SWA starts at an epoch's end, so from the next epoch on (a resumed one included) SWALR sets the lr.
        if self.swa.controls_lr:
            trainer.hooks["lr_schedule"].hold()

    def on_train_epoch_end(self, trainer: TrainerView) -> None:
        self.swa.after_epoch(trainer.state.epoch)

    def on_train_end(self, trainer: TrainerView) -> None:
        if not self.swa.finalize(trainer.loaders.train):
            log.warning("callbacks.swa.start_epoch=%s was never reached; no SWA model", self.swa.start_epoch)
            return
        split, epoch = trainer.monitor_split, trainer.state.epoch
        is_main = trainer.runtime.dist.is_main
        metrics = distributed.broadcast_object(trainer.evaluate_split(split, self.swa.module) if is_main else None)
        self.record = {"epoch": epoch, **{f"{split}_swa/{k}": metrics[k] for k in ("loss", "acc", "top5")}}
        trainer.log.scalars({k: v for k, v in self.record.items() if k != "epoch"}, trainer.state.end_of_run_step)
        log.info("SWA model (%d averages): %s %.4f", self.swa.num_averaged, split, metrics["acc"])
        if metrics["acc"] > trainer.state.best.get(trainer.monitor, -1.0):
            trainer.hooks["best_checkpoint"].update(
                trainer, {**self.record, trainer.monitor: metrics["acc"], "source": "swa"}, self.swa.module)

    def metrics(self) -> dict:
        return {"swa": self.record}

    def state_dict(self) -> dict:
        return self.swa.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.swa.load_state_dict(state)
