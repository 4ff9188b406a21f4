"""airbench94_muon: the Muon optimizer against torch.optim.Muon and the published step, several optimizers in one run
(each with its param groups and schedule, all in last.pt), and the recipe on a small CIFAR-format set."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from cifarbench.errors import CheckpointError, ConfigError
from cifarbench.optim.muon import Muon, orthogonalize
from tests.helpers.config import airbench_recipe, compose_config
from tests.helpers.data import write_cifar10

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def torch_newton_schulz(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    # torch's own iteration (private API): an independent oracle for ours.
    from torch.optim._muon import _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(matrix, COEFFICIENTS, steps, 1e-7)


@pytest.mark.parametrize("shape", [(64, 216), (256, 576), (300, 20)])
def test_orthogonalize_equals_torchs_newton_schulz(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = orthogonalize(matrix, steps=5)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, torch_newton_schulz(matrix, 5))
    # What the iteration is for: singular values pulled towards 1 (roughly 0.5-1.5 by design), from a spread input.
    singular = torch.linalg.svdvals(orthogonalize(matrix * torch.logspace(0, 2, shape[1]), steps=5).float())
    assert singular.min() > 0.3 and singular.max() < 1.5, singular


def steps_of(optimizer_class, shape, steps=4, **options):
    """`steps` steps of an optimizer on one parameter with the same random gradients; the final weights."""
    generator = torch.Generator().manual_seed(1)
    param = nn.Parameter(torch.randn(shape, generator=generator))
    optimizer = optimizer_class([param], **options)
    for _ in range(steps):
        param.grad = torch.randn(shape, generator=generator)
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("shape", [(64, 216), (32, 32)])
def test_on_matrices_muon_gives_torch_optim_muons_update(shape):
    # No momentum: the same arithmetic, bit for bit (torch's "original" lr adjustment is 1 when rows <= columns).
    ours = steps_of(Muon, shape, lr=0.1, momentum=0.0, nesterov=False)
    theirs = steps_of(torch.optim.Muon, shape, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    assert torch.equal(ours, theirs)
    # Nesterov momentum: torch averages where Muon sums, a scale the orthogonalisation divides out, so the two agree
    # up to bf16 rounding of the differently scaled input.
    start = steps_of(Muon, shape, steps=0)
    ours = steps_of(Muon, shape, lr=0.1, momentum=0.6, nesterov=True)
    theirs = steps_of(torch.optim.Muon, shape, lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.0)
    assert (ours - theirs).norm() < 0.05 * (theirs - start).norm()


def test_on_conv_filters_muon_takes_the_published_step():
    """airbench94_muon's step, written out: sum momentum with Nesterov, the filter bank rescaled to norm
    sqrt(out_channels), then 3 Newton-Schulz steps on the out_channels x fan_in update."""
    lr, momentum, shape = 0.24, 0.6, (16, 8, 3, 3)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(shape, generator=generator)
    grads = [torch.randn(shape, generator=generator) for _ in range(3)]

    param = nn.Parameter(weight.clone())
    optimizer = Muon([param], lr=lr, momentum=momentum, nesterov=True, ns_steps=3, normalize_weights=True)
    expected, buffer = weight.clone(), torch.zeros(shape)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        buffer = momentum * buffer + grad
        update = grad + momentum * buffer
        expected = expected * (math.sqrt(shape[0]) / expected.norm())
        expected = expected - lr * torch_newton_schulz(update.reshape(shape[0], -1), 3).float().view(shape)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(optimizer.state[param]["momentum_buffer"], buffer)


def newton_schulz_float64(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic iteration written out in fp64, the plain way (X <- aX + (bA + cA^2)X with A = XX^T)."""
    a, b, c = COEFFICIENTS
    x = matrix.double() / (matrix.double().norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 216), (300, 20)])
def test_orthogonalize_in_float32_is_the_iteration_to_float32_rounding(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ours = orthogonalize(matrix, steps=3, dtype=torch.float32)
    assert ours.dtype == torch.float32
    exact = newton_schulz_float64(matrix, 3)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-5)
    # bf16 (the published dtype) is ~100x coarser: the fp32 option is a real choice, not the same numbers.
    assert (orthogonalize(matrix, steps=3).double() - exact).abs().max() > 1e-3


@pytest.mark.parametrize("native", [True, False])
def test_ns_dtype_auto_is_bf16_only_where_the_device_computes_it_natively(monkeypatch, native):
    import cifarbench.device

    monkeypatch.setattr(cifarbench.device, "native_bf16", lambda device: (native, "stubbed"))
    runs = {dtype: steps_of(Muon, (16, 72), lr=0.1, ns_dtype=dtype) for dtype in ("auto", "bfloat16", "float32")}
    assert torch.equal(runs["auto"], runs["bfloat16" if native else "float32"])
    assert not torch.equal(runs["bfloat16"], runs["float32"])


def test_ns_dtype_is_kept_out_of_the_optimizer_state():
    """A setting of the machine: last.pt saved on a GPU (bf16) resumes in fp32 on a CPU that only emulates bf16."""
    saved = Muon([nn.Parameter(torch.zeros(4, 4))], ns_dtype="bfloat16").state_dict()
    resumed = Muon([nn.Parameter(torch.zeros(4, 4))], ns_dtype="float32")
    resumed.load_state_dict(saved)
    assert resumed.ns_dtype == "float32" and "ns_dtype" not in saved["param_groups"][0]
    with pytest.raises(ValueError, match="ns_dtype must be one of bfloat16, float32, auto; got 'fp16'"):
        Muon([nn.Parameter(torch.zeros(4, 4))], ns_dtype="fp16")


def test_muon_refuses_vectors_with_the_fix():
    with pytest.raises(ValueError, match=r"shape \(8,\) belongs to another optimizer"):
        Muon([nn.Parameter(torch.zeros(8))])


# ------------------------------------------------------------------------------- several optimizers per run
def muon_trainer(root, run_dir, *extra):
    from cifarbench.engine.trainer import Trainer

    return Trainer(compose_config(airbench_recipe(root, "airbench94_muon") + list(extra)), run_dir, {})


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("data"), per_batch=80, test_size=100)


def test_the_recipe_splits_its_parameters_between_sgd_and_muon(cifar_root, tmp_path):
    from cifarbench.optim.optimizer_sets import OptimizerSet

    trainer = muon_trainer(cifar_root, tmp_path / "run")
    assert isinstance(trainer.optimizer, OptimizerSet)
    sgd, muon = trainer.optimizer.optimizers["optimizer"], trainer.optimizer.optimizers["muon"]
    assert isinstance(sgd, torch.optim.SGD) and isinstance(muon, Muon)
    model = trainer.model
    named = {id(p): name for name, p in model.named_parameters()}
    groups = {g["name"]: sorted(named[id(p)] for p in g["params"]) for g in trainer.optimizer.param_groups}
    filters = sorted(n for n, p in model.named_parameters() if p.ndim == 4 and p.requires_grad)
    assert groups["conv_filters"] == filters and len(filters) == 6 and "whiten.weight" not in filters
    assert groups["whitening_bias"] == ["whiten.bias"] and groups["head"] == ["head.weight"]
    assert len(groups["norm_biases"]) == 6
    assert [g["name"] for g in muon.param_groups] == ["conv_filters"]
    rates = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    # Published: lr 0.053 for the biases, 0.67 for the head, each with weight decay 2e-6 x batch / lr; Muon 0.24.
    assert rates["head"] == pytest.approx((0.67, 2e-6 * 2000 / 0.67))
    assert rates["norm_biases"] == rates["whitening_bias"] == pytest.approx((0.053, 2e-6 * 2000 / 0.053))
    assert rates["conv_filters"] == pytest.approx((0.24, 0.0))
    assert muon.param_groups[0]["ns_steps"] == 3 and muon.param_groups[0]["normalize_weights"]
    assert muon.ns_dtype == "auto"  # the record's bf16 wherever it is native
    # The head starts at unit std, the logits are divided by the width.
    assert model.head.weight.std().item() == pytest.approx(1.0, rel=1e-5)
    assert model.logit_scale == 1 / 256


@pytest.mark.slow
def test_the_recipe_trains_each_group_on_its_own_schedule(cifar_root, tmp_path):
    # A narrower network (the schedules, the groups and Muon's norms do not depend on the widths): 8x less compute.
    trainer = muon_trainer(cifar_root, tmp_path / "run", "trainer.epochs=4", "model.widths=[32,96,96]",
                           "model.logit_scale=0.010416666666666666")  # 1/width, as the recipe's 1/256
    spe, total = trainer.steps_per_epoch, trainer.total_steps
    whiten_start = trainer.model.whiten.bias.detach().clone()
    result = trainer.fit()
    assert len(result["history"]) == 4
    for epoch, record in enumerate(result["history"], start=1):  # each group's lr after the epoch's last step
        steps = epoch * spe
        assert record["lr/conv_filters"] == pytest.approx(0.24 * (1 - steps / total))
        assert record["lr/head"] == pytest.approx(0.67 * (1 - steps / total))
        assert record["lr/whitening_bias"] == pytest.approx(0.053 * max(0.0, 1 - steps / (3 * spe)))
        assert record["lr"] == record["lr/norm_biases"]
    losses = [h["train/loss"] for h in result["history"]]
    assert losses[-1] < losses[0] * 0.8, losses
    assert not trainer.model.whiten.bias.requires_grad and not torch.equal(trainer.model.whiten.bias, whiten_start)
    # Muon keeps every conv filter bank at norm sqrt(out_channels) (up to its last step).
    for module in trainer.model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.requires_grad:
            assert module.weight.norm().item() == pytest.approx(math.sqrt(module.out_channels), rel=0.2)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert sorted(saved["optimizer"]) == ["muon", "optimizer"]
    assert len(saved["optimizer"]["muon"]["state"]) == 6  # a momentum buffer per filter bank
    assert saved["scheduler"]["muon"]["last_epoch"] == total == saved["scheduler"]["last_epoch"]


def test_an_extended_run_continues_every_schedule(cifar_root, tmp_path):
    from cifarbench.checkpoint.resume import extend_schedule

    trainer = muon_trainer(cifar_root, tmp_path / "run", "trainer.epochs=4")
    info = extend_schedule(trainer.scheduler, 2.0, 4.0, schedule_step=6)
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates["conv_filters"] == pytest.approx(0.24 * (1 - 6 / 12)) and info["at_step"] == 6
    assert rates["whitening_bias"] == pytest.approx(0.053 * (1 - 6 / 9))


def test_a_checkpoint_of_other_optimizers_is_refused(cifar_root, tmp_path):
    trainer = muon_trainer(cifar_root, tmp_path / "run")
    state = trainer.optimizer.state_dict()
    with pytest.raises(CheckpointError, match=r"the optimizers \[optimizer\] and this run has \[muon, optimizer\]"):
        trainer.optimizer.load_state_dict({"optimizer": state["optimizer"]})


def test_a_group_schedule_length_works_where_a_schedule_has_a_length_and_is_refused_elsewhere():
    from cifarbench.optim import schedules as optim

    def optimizer():
        groups = [{"params": [nn.Parameter(torch.zeros(1))], "name": name, "schedule_epochs": length}
                  for name, length in (("whitening_bias", 3), ("rest", None))]
        return torch.optim.SGD(groups, lr=1.0)

    linear = optim.piecewise_linear(optimizer(), steps_per_epoch=10, epochs=8, knots=[[0, 1], [1, 0]])
    cosine = optim.cosine(optimizer(), steps_per_epoch=10, epochs=8)
    for step in (0, 15, 30, 50):
        assert [f(step) for f in linear.lr_lambdas] == pytest.approx([max(0, 1 - step / 30), 1 - step / 80])
        assert cosine.lr_lambdas[0](step) == pytest.approx(0.5 * (1 + math.cos(math.pi * min(step / 30, 1))))
    for name in ("constant", "multistep", "cosine_restarts", "onecycle"):
        options = {"multistep": {"milestones": [2]}, "cosine_restarts": {"t0_epochs": 2}}.get(name, {})
        with pytest.raises(ConfigError, match=rf"param_groups whitening_bias set schedule_epochs, which "
                                              rf"scheduler={name} does not support"):
            getattr(optim, name)(optimizer(), steps_per_epoch=10, epochs=8, **options)


@pytest.mark.parametrize("override, message", [
    ("+optimizers.muon.optimizer.momentun=0.9", r"unknown config key optimizers.muon.optimizer.momentun: did you "
                                               r"mean optimizers.muon.optimizer.momentum\?"),
    ("+optimizers.muon.schedule=null", r"unknown config key optimizers.muon.schedule: did you mean "
                                       r"optimizers.muon.scheduler\?"),
    ("param_groups.conv_filters.optimizer=adam", r"param_groups.conv_filters.optimizer='adam' names no optimizer"),
    ("~optimizers.muon.optimizer.lr", r"optimizers.muon.optimizer.lr must be given"),
    ("+callbacks=swa", r"callbacks.swa takes over one optimizer's lr and this run has several"),
])
def test_bad_optimizer_configs_get_one_clear_message(cifar_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        muon_trainer(cifar_root, tmp_path / "run", override)


def test_fp16_with_a_grad_scaler_and_clipping_steps_every_optimizer_of_the_set(cifar_root, tmp_path, monkeypatch):
    """The GradScaler unscales, clips and steps an OptimizerSet as one optimizer (CPU fp16, as on a GPU): an
    overflowing step moves no parameter of either optimizer, the next one moves all of them."""
    monkeypatch.setattr("cifarbench.engine.runtime.check_device_precision", lambda device, precision: None)
    trainer = muon_trainer(cifar_root, tmp_path / "run", "trainer.precision=16", "trainer.grad_clip_norm=1.0",
                           "trainer.batch_size=16")
    assert trainer.scaler.is_enabled()
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    overflow_once = [True]
    trainer.model.head.weight.register_hook(lambda grad: grad * float("inf") if overflow_once and overflow_once.pop()
                                            else grad)
    images, labels = next(iter(trainer.loaders.train))
    # The summed loss overflows fp16 at the default initial scale (65536): start low, so only the injected inf does.
    trainer.scaler.scale(torch.ones(()))  # the scale tensor is made on first use
    trainer.scaler.update(new_scale=1.0)
    scale = trainer.scaler.get_scale()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.state.step_in_epoch = 1
        trainer.train_step(images, labels, trainer.steps_per_epoch)
        assert all(torch.equal(p, before[name]) for name, p in trainable.items())
        assert trainer.scaler.get_scale() == scale * trainer.scaler.get_backoff_factor()
        trainer.state.step_in_epoch = 2
        trainer.train_step(images, labels, trainer.steps_per_epoch)
    # The skipped step advanced the schedule, as an fp16 run's first steps do, without torch's false alarm about it.
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]
    assert trainer.scheduler.last_epoch == 2
    assert not any(torch.equal(p, before[name]) for name, p in trainable.items())  # SGD's and Muon's all stepped
    for optimizer in trainer.optimizer.optimizers.values():
        assert all(optimizer.state[p] for group in optimizer.param_groups for p in group["params"])


def test_muons_decoupled_weight_decay_scales_with_the_learning_rate():
    """One step: weight <- weight * (1 - lr * weight_decay) - lr * orthogonalize(grad) (no momentum history yet)."""
    torch.manual_seed(0)
    weight, grad = torch.randn(4, 6), torch.randn(4, 6)
    param = torch.nn.Parameter(weight.clone())
    param.grad = grad.clone()
    Muon([param], lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.5).step()
    expected = weight * (1 - 0.1 * 0.5) - 0.1 * orthogonalize(grad, 5).float()
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-6)
