"""The loss closure the training step hands to `optimizer.step(closure)`, so that an optimizer which evaluates the
loss again within one step (SAM's second pass, L-BFGS's line search) plugs in like any other.

The step has already run the forward and backward passes of the step's micro-batches when it calls the optimizer,
so the first call of the closure costs nothing: it returns that loss, and the gradients are those of the current
weights. Every later call zeroes the gradients and runs the passes again at the weights as the optimizer left them
(the same micro-batches, mixing and all), which is what such an optimizer asks for. SGD, AdamW and Muon call a
closure once or never, so they run exactly as without one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


class StepClosure:
    def __init__(self, loss: Tensor, recompute: Callable[[], Tensor]):
        self.loss, self.recompute = loss, recompute
        self.calls = 0

    def __call__(self) -> Tensor:
        self.calls += 1
        return self.loss if self.calls == 1 else self.recompute()

    def another(self) -> StepClosure:
        """The same closure for the next optimizer of a set (cifarbench.optim.optimizer_sets): its first call is
        free too, since each optimizer steps on the gradients the step computed."""
        return StepClosure(self.loss, self.recompute)


class ClosureStepper:
    """The optimizer as torch.amp.GradScaler sees it. GradScaler.step refuses a closure, so the scaler steps this
    stand-in (unscaling, checking for inf and skipping as usual), whose step() hands the real optimizer the
    closure of the current step. Passes that the closure runs again are unscaled by the closure itself."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.closure: StepClosure | None = None

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def step(self):
        return self.optimizer.step(self.closure)
