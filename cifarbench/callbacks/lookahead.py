"""Lookahead as airbench94 uses it (Jordan 2024): every `every` optimizer steps a running average of the weights (and
BatchNorm statistics) moves towards the model's, and the model is set to that average; at the last step the model
becomes the average. The average follows the model more closely as training goes on:
decay = base_decay**every * (step / total_steps)**power.
"""

from __future__ import annotations

import torch

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.engine.step import optimizer_steps


class Lookahead(Callback):
    def __init__(self, every: int = 5, base_decay: float = 0.95, power: float = 3.0):
        self.every, self.base_decay, self.power = int(every), float(base_decay), float(power)
        self.average: dict[str, torch.Tensor] = {}
        self.total_steps = 0

    def setup(self, trainer: TrainerView) -> None:
        self.total_steps = optimizer_steps(trainer.total_steps, trainer.steps_per_epoch,
                                           int(trainer.cfg.trainer.accumulate_steps))
        self.average = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def decay(self, step: int) -> float:
        return self.base_decay**self.every * (step / self.total_steps) ** self.power

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        """average <- decay * average + (1 - decay) * model; model <- average (floating-point tensors only)."""
        for average, current in zip(self.average.values(), model.state_dict().values()):
            if current.is_floating_point():
                average.lerp_(current, 1 - decay)
                current.copy_(average)

    def on_optimizer_step(self, trainer: TrainerView, images) -> None:
        step = trainer.state.global_step
        if step % self.every == 0:
            self.update(trainer.model, self.decay(step))
        if step >= self.total_steps:
            self.update(trainer.model, 1.0)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        for name, tensor in state["average"].items():
            self.average[name].copy_(tensor)
