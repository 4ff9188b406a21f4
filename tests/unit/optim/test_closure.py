"""The step hands the optimizer a loss closure (cifarbench.optim.closure): an optimizer that evaluates the loss again
within a step (SAM's second pass, L-BFGS) gets exactly the passes it asks for, under gradient accumulation and a
GradScaler, while SGD runs the passes once."""

from __future__ import annotations

import torch
from torch import nn

from cifarbench.engine.state import TrainState
from cifarbench.engine.step import TrainStep
from cifarbench.losses.cross_entropy import CrossEntropy
from cifarbench.optim.optimizer_sets import OptimizerSet


class TwoPassSharpness(torch.optim.Optimizer):
    """SAM (Foret et al. 2021) written out for the test: climb to w + rho g/|g|, take the gradient there (a second
    pass through the closure), come back to w and step plain SGD with that gradient."""

    def __init__(self, params, lr: float, rho: float):
        super().__init__(params, {"lr": lr, "rho": rho})
        self.closure_calls = 0

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        rho, lr = self.param_groups[0]["rho"], self.param_groups[0]["lr"]
        climbs = [p.grad * (rho / norm) for p in params]
        for p, e in zip(params, climbs):
            p.add_(e)
        with torch.enable_grad():
            closure()
            closure()  # the first call is the pass the step already ran; this one runs at w + e
        self.closure_calls += 1
        for p, e in zip(params, climbs):
            p.sub_(e)
            p.add_(p.grad, alpha=-lr)


def _model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _batches(count: int, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 4, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(count)]


def _step(model, optimizer, accumulate_steps: int, precision: str = "32", scaler=None) -> TrainStep:
    return TrainStep(model=model, train_model=model, ddp=None, optimizer=optimizer,
                     scaler=scaler or torch.amp.GradScaler("cpu", enabled=False), loss=CrossEntropy(), mixer=None,
                     mix_generator=None, device=torch.device("cpu"), precision=precision,
                     accumulate_steps=accumulate_steps, grad_clip_norm=None, nonfinite="stop", max_skipped_steps=0)


def _train(step: TrainStep, batches) -> TrainState:
    state = TrainState()
    for index, (images, labels) in enumerate(batches, start=1):
        state.step_in_epoch = index
        step(images, labels, state, steps_in_epoch=len(batches))
    return state


def _sam_by_hand(model: nn.Module, groups, lr: float, rho: float) -> None:
    """The published update, one accumulation group (list of micro-batches) per step, the gradient of a group being
    the mean of its micro-batches' gradients."""
    def gradient(group):
        model.zero_grad()
        for images, labels in group:
            (nn.functional.cross_entropy(model(images), labels) / len(group)).backward()
        return [p.grad.clone() for p in model.parameters()]

    for group in groups:
        grads = gradient(group)
        norm = torch.norm(torch.stack([g.norm() for g in grads]))
        with torch.no_grad():
            climbs = [g * (rho / norm) for g in grads]
            for p, e in zip(model.parameters(), climbs):
                p.add_(e)
        sharp = gradient(group)
        with torch.no_grad():
            for p, e, g in zip(model.parameters(), climbs, sharp):
                p.sub_(e)
                p.add_(g, alpha=-lr)


def test_a_two_pass_optimizer_gets_its_second_pass_over_every_micro_batch_of_the_group():
    batches = _batches(4)
    model, reference, plain = _model(), _model(), _model()
    optimizer = TwoPassSharpness(model.parameters(), lr=0.5, rho=0.2)
    state = _train(_step(model, optimizer, accumulate_steps=2), batches)
    assert state.global_step == 2 and optimizer.closure_calls == 2
    _sam_by_hand(reference, [batches[:2], batches[2:]], lr=0.5, rho=0.2)
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias, reference.bias, rtol=0, atol=1e-6)
    # Anchor: the second pass changed the update (plain SGD with the same lr lands elsewhere).
    _train(_step(plain, torch.optim.SGD(plain.parameters(), lr=0.5), accumulate_steps=2), batches)
    assert (model.weight - plain.weight).abs().max() > 1e-3


def test_a_grad_scaler_unscales_the_passes_the_closure_runs_again():
    """fp16 loss scaling (a GradScaler at scale 2^10) must give the same SAM update as no scaling: the first pass is
    unscaled by the scaler, the second by the closure."""
    batches = _batches(2)
    scaled, unscaled = _model(), _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(_step(scaled, TwoPassSharpness(scaled.parameters(), lr=0.5, rho=0.2), 1, precision="32", scaler=scaler),
           batches)
    _train(_step(unscaled, TwoPassSharpness(unscaled.parameters(), lr=0.5, rho=0.2), 1), batches)
    assert scaler.get_scale() == 2.0**10  # no overflow: both steps were taken
    torch.testing.assert_close(scaled.weight, unscaled.weight, rtol=1e-5, atol=1e-6)
    assert (scaled.weight - _model().weight).abs().max() > 1e-2  # and they moved


def test_lbfgs_gets_a_closure_that_reevaluates_at_its_own_iterates():
    batches = _batches(1, size=16)
    model, reference = _model(), _model()
    step = _step(model, torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), accumulate_steps=1)
    _train(step, batches)
    lbfgs = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4)
    images, labels = batches[0]

    def closure():
        lbfgs.zero_grad()
        loss = nn.functional.cross_entropy(reference(images), labels)
        loss.backward()
        return loss

    lbfgs.step(closure)
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=1e-6)
    assert lbfgs.state[lbfgs._params[0]]["func_evals"] > 1  # it did evaluate again: the closure mattered


def test_sgd_runs_the_passes_once_with_or_without_the_closure():
    batches = _batches(3)
    model, reference = _model(), _model()
    calls = []
    forward = model.forward
    model.forward = lambda x: (calls.append(1), forward(x))[1]
    _train(_step(model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9), accumulate_steps=1), batches)
    assert len(calls) == 3  # one forward per micro-batch: the closure's free first call ran nothing
    sgd = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9)
    for images, labels in batches:
        sgd.zero_grad()
        nn.functional.cross_entropy(reference(images), labels).backward()
        sgd.step()
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=1e-6)


def test_each_optimizer_of_a_set_gets_a_closure_whose_first_call_is_free():
    a_model, b_model = _model(0), _model(1)
    batches = _batches(1)

    class Both(nn.Module):
        def forward(self, x):
            return a_model(x) + b_model(x)

    calls = []
    both = Both()
    forward = both.forward
    both.forward = lambda x: (calls.append(1), forward(x))[1]
    optimizer = OptimizerSet({"optimizer": torch.optim.SGD(a_model.parameters(), lr=0.1),
                              "other": torch.optim.SGD(b_model.parameters(), lr=0.1)})
    before = b_model.weight.detach().clone()
    _train(_step(both, optimizer, accumulate_steps=1), batches)
    assert len(calls) == 1 and not torch.equal(b_model.weight, before)
