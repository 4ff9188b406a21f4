"""Exponential moving average (EMA) of model weights.

Why not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: that function bakes in one fixed
decay, so warmup would need a hand-written ``avg_fn`` anyway; AveragedModel also copies the weights outright on its
first update (this EMA starts from the initial weights and applies the warmup decay from the first update), knows
nothing of an update interval, and would prefix every state-dict key with ``module.``. The class below is the same
few foreach ops, with those three things spelled out.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.errors import ConfigError


class ModelEma:
    """EMA of a model's parameters: ``ema = decay_t * ema + (1 - decay_t) * weights``.

    Args:
        model: the model being trained (the raw module, not a ``torch.compile`` wrapper). It is deep-copied; the
            copy (``self.module``) is kept in eval mode with ``requires_grad=False``.
        decay: the decay per update.
        warmup: use ``decay_t = min(decay, (1 + t) / (10 + t))`` with ``t`` the number of updates done before this
            one (the formulation of TensorFlow's ExponentialMovingAverage with ``num_updates``). Early weights are
            then forgotten quickly instead of dominating a 0.9999 average for tens of thousands of steps.
        update_every: update only when ``step % update_every == 0``. The decay is per *update*, so the averaging
            horizon in optimizer steps is about ``update_every / (1 - decay)``.

    Floating-point buffers (BatchNorm running mean/var) are averaged with the same decay, so the statistics belong
    to the averaged weights rather than to the live ones; integer buffers (``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, update_every: int = 1):
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1], got {decay}")
        if update_every < 1:
            raise ConfigError(f"ema.update_every must be an integer >= 1, got {update_every}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every = int(update_every)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> bool:
        """Fold ``model``'s current weights into the average; returns whether an update happened.

        ``step`` is the trainer's global optimizer-step count; with ``update_every > 1`` steps that are not a
        multiple of it are skipped. ``step=None`` always updates.
        """
        if step is not None and step % self.update_every != 0:
            return False
        decay = self.current_decay()
        ema_float, live_float = [], []
        for (name, ema_t), (_, live_t) in zip(self._tensors(self.module), self._tensors(model), strict=True):
            live_t = live_t.detach()
            if ema_t.shape != live_t.shape:
                raise ValueError(
                    f"ModelEma: tensor {name} has shape {tuple(live_t.shape)}, EMA has {ema_t.shape}"
                )
            if ema_t.is_floating_point():
                ema_float.append(ema_t)
                live_float.append(live_t.to(ema_t.device, ema_t.dtype))
            else:
                ema_t.copy_(live_t)
        if ema_float:
            # One fused kernel per device/dtype group instead of one launch per tensor.
            torch._foreach_lerp_(ema_float, live_float, 1.0 - decay)
        self.num_updates += 1
        return True

    @staticmethod
    def _tensors(model: nn.Module):
        # Parameters and buffers in a fixed order; names only for error messages.
        yield from model.named_parameters()
        yield from model.named_buffers()

    def state_dict(self) -> dict:
        """Averaged weights plus the counters that make resume exact."""
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
            "update_every": self.update_every,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the weights and the update count; the decay settings stay as configured now."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


class EmaCallback(Callback):
    """`+callbacks=ema`: an exponential moving average of the weights, updated after every optimizer step and
    evaluated beside them each epoch (as <split>_ema/); with `select_best`, the averaged weights are the ones
    monitored and saved as best.pt."""

    def __init__(self, decay: float = 0.9999, warmup: bool = True, update_every: int = 1, select_best: bool = True):
        self.decay, self.warmup, self.update_every = float(decay), bool(warmup), int(update_every)
        self.select_best = bool(select_best)
        self.ema: ModelEma | None = None

    def setup(self, trainer: TrainerView) -> None:
        self.ema = ModelEma(trainer.model, self.decay, self.warmup, self.update_every)
        trainer.hooks["evaluation"].add_model("ema", self.ema.module)
        if self.select_best:
            trainer.hooks["best_checkpoint"].select("ema", self.ema.module)

    def on_optimizer_step(self, trainer: TrainerView, images) -> None:
        self.ema.update(trainer.model, trainer.state.global_step)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
