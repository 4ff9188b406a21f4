"""A test-only callback with state of its own, known to no checkpoint code."""

from __future__ import annotations

from cifarbench.engine.callbacks import Callback


class StepCounter(Callback):
    """Counts optimizer steps and sums each step's mean input value: an exact resume gives the same numbers."""

    def __init__(self):
        self.steps, self.pixel_sum = 0, 0.0

    def on_optimizer_step(self, trainer, images) -> None:
        self.steps += 1
        self.pixel_sum += float(images.float().mean())

    def metrics(self) -> dict:
        return {"step_counter": {"steps": self.steps, "pixel_sum": self.pixel_sum}}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "pixel_sum": self.pixel_sum}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.pixel_sum = state["steps"], state["pixel_sum"]
