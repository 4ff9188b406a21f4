"""Sharpness-aware minimisation (Foret et al. 2021, arXiv 2010.01412) and its adaptive form ASAM (Kwon et al. 2021,
arXiv 2102.11600), wrapping any optimizer the run builds: one optimizer, one with parameter groups, or a set of
several (cifarbench.optim.optimizer_sets). Chosen with the `sam` config group:

    python -m cifarbench.train sam=sam                   # rho 0.05, around the run's `optimizer`
    python -m cifarbench.train sam=asam sam.rho=1.0      # the adaptive form

conf/sam/*.yaml build SAM partially; cifarbench.engine.setup hands it the built optimizer and the biases.

One step, given the gradient g of the loss at the weights w (the training step's first pass):
  1. e = rho * g / ||g||, the norm over every trained parameter together; ASAM scales elementwise by
     T = |w| + eta, e = rho * T^2 g / ||T g||, with T = 1 for biases as in the ASAM authors' code;
  2. the gradient at w + e (the closure runs the step's micro-batches again);
  3. w restored exactly (a copy, not w + e - e) and the base optimizer steps with that second gradient.
Weight decay stays in the base optimizer, outside the ascent gradient, as in the common PyTorch implementations.

How it meets the rest of the training step (cifarbench.engine.step):
- The second pass runs with BatchNorm's running statistics frozen, so after a step they are those of one forward
  pass at w, as in the paper's implementation, which keeps the model state of the first pass only.
- Under DDP the first pass is not all-reduced: each rank perturbs along its own gradient (the paper's
  m-sharpness, m = the per-rank batch), and only the second pass is averaged. `first_pass_local` asks the step
  for that.
- With fp16 the grad scaler unscales before SAM sees a gradient, and skips the whole step when the first gradient
  overflows. A second gradient that is not finite skips the step too, with w restored (`skipped`); the step then
  backs the scaler off as for an overflow. In bf16 and fp32 the same two checks skip the step.
"""

from __future__ import annotations

import torch

from cifarbench import distributed
from cifarbench.errors import ConfigError


class SAM:
    """Wraps `optimizer`; `param_groups`, `zero_grad`, the schedules and the checkpoints see the base optimizer."""

    first_pass_local = True  # the training step runs the first pass without DDP's all-reduce (m-sharpness)

    def __init__(self, optimizer, rho: float = 0.05, adaptive: bool = False, eta: float = 0.0,
                 unscaled: frozenset[int] | set[int] = frozenset(), eps: float = 1e-12):
        check_settings(rho, eta)
        refuse_unwrappable(optimizer)
        self.optimizer = optimizer
        self.rho, self.adaptive, self.eta, self.eps = float(rho), bool(adaptive), float(eta), float(eps)
        self.unscaled = frozenset(unscaled)  # ids of parameters ASAM leaves unscaled (biases)
        self.skipped: str | None = None  # "first" or "second": the last step was skipped for that gradient

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _trained(self) -> list[torch.Tensor]:
        return [param for group in self.param_groups for param in group["params"] if param.grad is not None]

    @staticmethod
    def _finite(params: list[torch.Tensor]) -> bool:
        """Whether every gradient is finite on every rank (one wait for the device): under DDP the first pass's
        gradients are each rank's own, and the ranks must agree to skip or to step."""
        bad = torch.zeros((), device=params[0].device) if params else torch.zeros(())
        for param in params:
            bad = bad + (~torch.isfinite(param.grad)).any()
        return not bool(distributed.all_reduce_max(bad.float()) > 0)

    def _scaling(self, param: torch.Tensor) -> torch.Tensor | None:
        """ASAM's T for one parameter (None: 1)."""
        if not self.adaptive or id(param) in self.unscaled:
            return None
        return param.detach().abs().add_(self.eta)

    @torch.no_grad()
    def perturbation(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """e for each parameter, from the gradients they hold."""
        scalings = [self._scaling(param) for param in params]
        scaled = [param.grad if t is None else param.grad * t for param, t in zip(params, scalings)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in scaled]))
        factor = self.rho / (norm + self.eps)
        return [(g if t is None else g * t) * factor.to(g.dtype) for g, t in zip(scaled, scalings)]

    def step(self, closure=None):
        if closure is None:
            raise ConfigError("SAM evaluates the loss again at the perturbed weights, so its step needs a closure; "
                              "the cifarbench training step gives one")
        self.skipped = None
        with torch.enable_grad():
            loss = closure()  # the step's first pass: free, its gradients are those at w
        params = self._trained()
        if not self._finite(params):
            self.skipped = "first"
            return loss
        with torch.no_grad():
            saved = [param.detach().clone() for param in params]
            for param, e in zip(params, self.perturbation(params)):
                param.add_(e)
        with torch.enable_grad():
            closure()  # the gradient at w + e
        with torch.no_grad():
            for param, original in zip(params, saved):
                param.copy_(original)
        if not self._finite(self._trained()):
            self.skipped = "second"
            return loss
        self.optimizer.step()
        return loss

    def state_dict(self) -> dict:
        # SAM itself keeps nothing between steps; rho and the form are saved so a resume can't silently change them.
        return {"sam": {"rho": self.rho, "adaptive": self.adaptive, "eta": self.eta},
                "base": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        from cifarbench.errors import CheckpointError

        if "sam" not in state or "base" not in state:
            raise CheckpointError("the checkpoint's optimizer state was saved without SAM and this run uses SAM; "
                                  "resume with the sam setting it was saved with")
        self.optimizer.load_state_dict(state["base"])


def check_settings(rho, eta=0.0) -> None:
    """rho > 0 and eta >= 0, checked with the rest of the config before any data is read."""
    try:
        rho, eta = float(rho), float(eta)
    except (TypeError, ValueError):
        raise ConfigError(f"sam.rho={rho!r} and sam.eta={eta!r} must be numbers") from None
    if not rho > 0:
        raise ConfigError(f"sam.rho={rho:g} must be > 0: it is the neighbourhood's radius (the SAM paper uses 0.05, "
                          "ASAM 2.0); to train without SAM, drop the sam group (sam=null)")
    if not eta >= 0:
        raise ConfigError(f"sam.eta={eta:g} must be >= 0 (ASAM's authors use 0.01)")


def refuse_unwrappable(optimizer) -> None:
    """SAM steps its base once, without a closure, after restoring w: an optimizer that needs the closure itself
    (L-BFGS evaluates the loss several times per step) or that is already sharpness-aware can't be its base."""
    for inner in getattr(optimizer, "optimizers", {"optimizer": optimizer}).values():
        if isinstance(inner, SAM):
            raise ConfigError("sam wraps an optimizer that is already SAM; give the sam group once")
        if isinstance(inner, torch.optim.LBFGS):
            raise ConfigError(f"sam can't wrap {type(inner).__name__}: it evaluates the loss again within its own "
                              "step, which SAM's second pass would feed the perturbed weights; use sgd or adamw")
        if not hasattr(inner, "param_groups") or not callable(getattr(inner, "step", None)):
            raise ConfigError(f"sam can't wrap {type(inner).__name__}: it is not a torch optimizer (no param_groups "
                              "or step)")


def biases(model: torch.nn.Module) -> frozenset[int]:
    """The parameters ASAM leaves unscaled: those named `bias`."""
    return frozenset(id(param) for name, param in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias")



def base_optimizer(optimizer):
    """The optimizer SAM wraps (or `optimizer` itself): what takes over an lr (SWALR) needs the torch optimizer."""
    return optimizer.optimizer if isinstance(optimizer, SAM) else optimizer
