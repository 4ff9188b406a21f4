"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"): momentum SGD whose update is orthogonalised by a
few Newton-Schulz iterations before it is applied, for the weight matrices and conv filters of hidden layers.

Why not `torch.optim.Muon` (torch >= 2.9): it accepts 2-D parameters only, and its update has no weight
renormalisation, while the CIFAR-10 record (`airbench94_muon.py`) steps 4-D conv filters (each reshaped to
out_channels x fan_in) and rescales every filter bank to norm sqrt(out_channels) before its step, which stands in for
weight decay. On 2-D parameters without renormalisation the two give the same update
(tests/unit/optim/test_muon.py): torch keeps its momentum as an average, (1 - momentum) times the sum kept here,
and the orthogonalisation divides that scale out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The quintic iteration's coefficients, chosen to raise small singular values fast (Jordan 2024).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def orthogonalize(matrix: Tensor, steps: int, coefficients=NEWTON_SCHULZ_COEFFICIENTS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """About U V^T of `matrix` = U S V^T, in `dtype` (bf16 as published): the singular values land in roughly
    (0.5, 1.5), which trains as well as exact orthogonalisation at a fraction of the cost."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm = 1: inside the iteration's basin
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # the Gram matrix of the short side is the cheaper one
    for _ in range(steps):
        gram = x @ x.T
        # addmm rounds each sum to bf16 once, not each product and sum apart: about half the error of plain ops.
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for parameters of 2 or more dimensions (a conv filter bank is stepped as out_channels x fan_in).

    Per parameter and step: `buffer = momentum * buffer + grad`; the update is `grad + momentum * buffer` (Nesterov)
    or `buffer`; with `normalize_weights` the weight is first rescaled to Frobenius norm sqrt(out_channels); then
    `weight -= lr * orthogonalize(update)` after an optional decoupled `weight *= 1 - lr * weight_decay`.

    `ns_dtype`: what the Newton-Schulz iteration computes in. `bfloat16` is the published recipe; `float32` is for
    hardware that only emulates bf16 (an AVX2 CPU: the 3 iterations over airbench94_muon's filter banks took 4.5 s a
    step in bf16 and 0.12 s in fp32 here); `auto` is bf16 where the parameter's device computes it natively
    (`cifarbench.device.native_bf16`: Ampere+ GPUs, CPUs with AVX512-BF16/AMX), else fp32.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients=NEWTON_SCHULZ_COEFFICIENTS, eps: float = 1e-7, normalize_weights: bool = False,
                 weight_decay: float = 0.0, ns_dtype: str = "bfloat16"):
        if ns_dtype not in (*NS_DTYPES, "auto"):
            raise ValueError(f"Muon: ns_dtype must be one of bfloat16, float32, auto; got {ns_dtype!r}")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Muon: nesterov needs momentum > 0")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, normalize_weights=normalize_weights,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # not a group default: a setting of the machine, not of the run's state
        self._auto_dtypes: dict[torch.device, torch.dtype] = {}
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim < 2:
                    raise ValueError(
                        f"Muon steps matrices and filter banks; a parameter of shape {tuple(param.shape)} belongs "
                        "to another optimizer (give it to a param group of the main optimizer)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(grad)
                update = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if group["normalize_weights"]:
                    param.mul_(math.sqrt(param.size(0)) / param.norm())
                if group["weight_decay"]:
                    param.mul_(1 - lr * group["weight_decay"])
                direction = orthogonalize(update.reshape(len(update), -1), group["ns_steps"],
                                          group["ns_coefficients"], group["eps"], self._dtype_on(param.device))
                param.add_(direction.view(update.shape).to(param.dtype), alpha=-lr)
        return loss

    def _dtype_on(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype != "auto":
            return NS_DTYPES[self.ns_dtype]
        if device not in self._auto_dtypes:
            from cifarbench.device import native_bf16

            self._auto_dtypes[device] = torch.bfloat16 if native_bf16(device)[0] else torch.float32
        return self._auto_dtypes[device]
