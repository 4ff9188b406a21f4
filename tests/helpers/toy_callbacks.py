"""A test-only callback with state of its own, known to no checkpoint code."""

from __future__ import annotations

from cifarbench.engine.hooks import Callback


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


class RankWeights(Callback):
    """Saves this rank's final weights to <run_dir>/weights_rank<r>.pt: under torchrun, DDP must keep every rank's
    copy identical, and last.pt holds rank 0's only. At the end of training, after the callbacks before this one
    (lookahead's final average), before rank 0 alone loads best.pt to test it."""

    def on_train_end(self, trainer) -> None:
        import torch

        # Parameters only: each rank's BatchNorm running statistics last saw its own batch (DDP broadcasts rank 0's
        # buffers before each forward, not after).
        weights = {name: value.detach().cpu().clone() for name, value in trainer.model.named_parameters()}
        torch.save(weights, trainer.run_dir / f"weights_rank{trainer.runtime.dist.rank}.pt")
