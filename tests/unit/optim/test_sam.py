"""SAM and ASAM (cifarbench.optim.sam) through the real training step, against the published update written out by
hand here: e = rho g / ||g|| (ASAM: rho T^2 g / ||T g||, T = |w| + eta, biases unscaled), the gradient at w + e,
w restored, then the base step with that gradient. The hand-written side keeps BatchNorm's running statistics of
the first pass by saving and restoring them, a different mechanism from the step's."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.config import validate
from cifarbench.engine.state import TrainState
from cifarbench.engine.step import TrainStep
from cifarbench.errors import CheckpointError, ConfigError
from cifarbench.losses.cross_entropy import CrossEntropy
from cifarbench.optim.optimizer_sets import OptimizerSet
from cifarbench.optim.sam import SAM, biases
from tests.helpers.compare import assert_identical
from tests.helpers.config import compose_config
from tests.helpers.ranks import join_or_fail
from tests.helpers.runs import stopped_then_resumed, toy_trainer

RHO = 0.1


class SmallBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def _model(seed: int = 0) -> SmallBNNet:
    torch.manual_seed(seed)
    return SmallBNNet()


def _batches(count: int, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(count)]


def _sgd(params):
    return torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=5e-4)


def _step(model, optimizer, accumulate_steps: int = 1, precision: str = "32", scaler=None, clip=None) -> TrainStep:
    return TrainStep(model=model, train_model=model, ddp=None, optimizer=optimizer,
                     scaler=scaler or torch.amp.GradScaler("cpu", enabled=False), loss=CrossEntropy(), mixer=None,
                     mix_generator=None, device=torch.device("cpu"), precision=precision,
                     accumulate_steps=accumulate_steps, grad_clip_norm=clip, nonfinite="stop", max_skipped_steps=3)


def _train(step: TrainStep, batches) -> tuple[TrainState, list[bool]]:
    state, stepped = TrainState(), []
    for index, (images, labels) in enumerate(batches, start=1):
        state.step_in_epoch = index
        stepped.append(step(images, labels, state, steps_in_epoch=len(batches))[3])
    return state, stepped


# ------------------------------------------------------------------------------------------ the oracle, by hand
def _gradient(model, group, autocast_dtype=None, scale: float = 1.0):
    """The mean gradient of a group of micro-batches (loss scaled by `scale` and unscaled again, as fp16 does)."""
    model.zero_grad(set_to_none=True)
    for images, labels in group:
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        (loss / len(group) * scale).backward() if scale != 1.0 else (loss / len(group)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return [g * (1.0 / scale) for g in grads] if scale != 1.0 else grads


def sam_by_hand(model, base, groups, *, rho=RHO, adaptive=False, eta=0.0, eps=1e-12, autocast_dtype=None,
                scale=1.0, clip=None):
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    for group in groups:
        g = _gradient(model, group, autocast_dtype, scale)
        with torch.no_grad():
            if adaptive:
                t = [torch.ones_like(p) if name.endswith("bias") else p.abs() + eta for name, p in zip(names, params)]
            else:
                t = [torch.ones_like(p) for p in params]
            norm = torch.norm(torch.stack([(ti * gi).norm() for ti, gi in zip(t, g)]))
            if adaptive:
                e = [ti * ti * gi * (rho / (norm + eps)) for ti, gi in zip(t, g)]
            else:
                e = [gi * (rho / (norm + eps)) for gi in g]
            w = [p.detach().clone() for p in params]
            stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
            for p, ei in zip(params, e):
                p.add_(ei)
        sharp = _gradient(model, group, autocast_dtype, scale)
        with torch.no_grad():
            for p, wi, gi in zip(params, w, sharp):
                p.copy_(wi)
                p.grad = gi
            model.load_state_dict({**model.state_dict(), **stats})  # the second pass leaves the statistics
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        base.step()


def _assert_same(model, reference, exact=True):
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        if exact:
            assert torch.equal(a, b), f"{name} differs from the published update"
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the published update")


# ------------------------------------------------------------------------------------------------- the updates
@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_sam_through_the_training_step_is_the_published_update_bitwise(accumulate_steps):
    batches = _batches(4)
    model, reference, plain = _model(), _model(), _model()
    sam = SAM(_sgd(model.parameters()), rho=RHO)
    state, _ = _train(_step(model, sam, accumulate_steps), batches)
    groups = [batches[i:i + accumulate_steps] for i in range(0, 4, accumulate_steps)]
    sam_by_hand(reference, _sgd(reference.parameters()), groups)
    assert state.global_step == len(groups)
    _assert_same(model, reference)
    # Anchor: SGD alone, same lr and batches, lands elsewhere.
    _train(_step(plain, _sgd(plain.parameters()), accumulate_steps), batches)
    assert (model.fc.weight - plain.fc.weight).abs().max() > 1e-4


def test_asam_is_the_published_adaptive_update():
    batches = _batches(3)
    model, reference = _model(), _model()
    asam = SAM(_sgd(model.parameters()), rho=1.0, adaptive=True, eta=0.01, unscaled=biases(model))
    _train(_step(model, asam), batches)
    sam_by_hand(reference, _sgd(reference.parameters()), [[b] for b in batches], rho=1.0, adaptive=True, eta=0.01)
    # Same maths, the products taken in another order: equal to float rounding.
    _assert_same(model, reference, exact=False)
    plain_sam = _model()
    _train(_step(plain_sam, SAM(_sgd(plain_sam.parameters()), rho=1.0)), batches)
    assert (model.conv.weight - plain_sam.conv.weight).abs().max() > 1e-4  # the adaptive form did change the step


def test_batchnorm_running_statistics_after_a_sam_step_are_those_of_one_forward_pass():
    (images, labels), = _batches(1)
    model, once = _model(), _model()
    _train(_step(model, SAM(_sgd(model.parameters()), rho=RHO)), [(images, labels)])
    once.train()
    once(images)
    for key in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(model.state_dict()[key], once.state_dict()[key]), key
    assert int(model.bn.num_batches_tracked) == 1 and model.bn.track_running_stats


def test_sam_wraps_an_optimizer_set_with_one_norm_over_all_of_its_parameters():
    batches = _batches(2)
    model, reference = _model(), _model()
    head = list(model.fc.parameters())
    body = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
    both = OptimizerSet({"optimizer": _sgd(body), "head": _sgd(head)})
    _train(_step(model, SAM(both, rho=RHO)), batches)
    sam_by_hand(reference, _sgd(reference.parameters()), [[b] for b in batches])
    # One SGD over all parameters and two over parts of them take the same steps.
    _assert_same(model, reference)


def test_sam_with_clipping_clips_the_gradient_the_base_optimizer_steps_with():
    batches = _batches(2)
    model, reference = _model(), _model()
    _train(_step(model, SAM(_sgd(model.parameters()), rho=RHO), clip=0.05), batches)
    sam_by_hand(reference, _sgd(reference.parameters()), [[b] for b in batches], clip=0.05)
    _assert_same(model, reference)


# ------------------------------------------------------------------------------------------- fp16 and skipping
def test_fp16_sam_perturbs_along_the_unscaled_gradient():
    """SAM's direction is scale-free except for its eps; eps=1 makes it tell the scaled gradient from the true one,
    so this fails if SAM perturbs before the scaler unscales."""
    batches = _batches(2)
    model, reference = _model(), _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(_step(model, SAM(_sgd(model.parameters()), rho=RHO, eps=1.0), precision="16", scaler=scaler), batches)
    assert scaler.get_scale() == 2.0**10  # no overflow, no skip
    sam_by_hand(reference, _sgd(reference.parameters()), [[b] for b in batches], eps=1.0,
                autocast_dtype=torch.float16, scale=2.0**10)
    _assert_same(model, reference)


def test_an_fp16_step_whose_first_gradient_overflows_is_skipped_whole():
    batches = _batches(1)
    model, untouched = _model(), _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    sam = SAM(_sgd(model.parameters()), rho=RHO)
    step = _step(model, sam, precision="16", scaler=scaler)
    _train(step, batches)
    assert scaler.get_scale() == 2.0**99  # backed off, as for any overflow
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(untouched.named_parameters())[name]), name
    assert sam.optimizer.state == {} and step.take_extra_passes() == 0  # no second pass, no momentum


class Cliff(nn.Module):
    """Finite at w; SAM's ascent step carries `a` past 0.01, where sqrt(0.01 - a) and its gradient are NaN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        x = x.float().flatten(1)[:, :4]
        cliff = -torch.sqrt(0.01 - self.a)
        return self.fc(x) + torch.stack([cliff.expand(len(x)), torch.zeros(len(x)), torch.zeros(len(x))], 1)


@pytest.mark.parametrize("precision", ["32", "16"])
def test_a_step_whose_second_gradient_is_not_finite_is_skipped_with_the_weights_restored(precision):
    images = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    labels = torch.ones(8, dtype=torch.long)  # the logit of class 0 is pushed down: the ascent raises `a`
    model = Cliff()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=precision == "16")
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=1.0)
    state, stepped = _train(_step(model, sam, precision=precision, scaler=scaler), [(images, labels)])
    assert sam.skipped == "second"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was not restored"
    assert sam.optimizer.state == {}  # the base optimizer never stepped
    if precision == "16":
        assert scaler.get_scale() == 2.0**7 and stepped == [True]  # an overflow: the scaler backs off
    else:
        assert state.skipped_steps == 1 and stepped == [False] and state.global_step == 0


# ---------------------------------------------------------------------------------------- state and refusals
def test_sam_state_round_trips_and_a_plain_optimizer_state_is_refused():
    model = _model()
    sam = SAM(_sgd(model.parameters()), rho=RHO)
    _train(_step(model, sam), _batches(2))
    saved = sam.state_dict()
    assert saved["sam"] == {"rho": RHO, "adaptive": False, "eta": 0.0}
    fresh = SAM(_sgd(model.parameters()), rho=RHO)
    fresh.load_state_dict(copy.deepcopy(saved))
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       saved["base"]["state"][0]["momentum_buffer"])
    with pytest.raises(CheckpointError, match="saved without SAM"):
        fresh.load_state_dict(saved["base"])


@pytest.mark.parametrize("rho", [0.0, -0.05])
def test_a_rho_that_is_not_positive_is_refused(rho):
    with pytest.raises(ConfigError, match=r"sam.rho=-?0(.05)? must be > 0"):
        SAM(_sgd(_model().parameters()), rho=rho)


def test_sam_refuses_an_optimizer_it_cannot_wrap():
    model = _model()
    with pytest.raises(ConfigError, match="can't wrap LBFGS"):
        SAM(torch.optim.LBFGS(model.parameters()))
    with pytest.raises(ConfigError, match="already SAM"):
        SAM(SAM(_sgd(model.parameters())))
    with pytest.raises(ConfigError, match="not a torch optimizer"):
        SAM(object())


# -------------------------------------------------------------------------------------------- DDP, m-sharpness
def _ddp_rank(rank: int, init_file: str, out: str, overflow_on_rank_1: bool = False) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = _model()
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        sam = SAM(_sgd(model.parameters()), rho=RHO)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=overflow_on_rank_1)
        step = TrainStep(model=model, train_model=ddp, ddp=ddp, optimizer=sam, scaler=scaler, loss=CrossEntropy(),
                         mixer=None, mix_generator=None, device=torch.device("cpu"),
                         precision="16" if overflow_on_rank_1 else "32", accumulate_steps=2, grad_clip_norm=None,
                         nonfinite="stop", max_skipped_steps=0)
        batches = _batches(4, seed=10 + rank)
        if overflow_on_rank_1 and rank == 1:
            batches[0][0][0, 0, 0, 0] = float("inf")  # only this rank's own first gradient overflows
        _train(step, batches[:2] if overflow_on_rank_1 else batches)
        torch.save({"weights": {k: v.detach().clone() for k, v in model.named_parameters()},
                    "scale": scaler.get_scale() if overflow_on_rank_1 else None}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn_two_ranks(tmp_path, overflow_on_rank_1: bool = False) -> list[dict]:
    """The two ranks' results; a rank that hangs (waiting on a collective the other skipped) fails the test."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "weights")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    context = mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), out, overflow_on_rank_1), nprocs=2, join=False)
    join_or_fail(context, 120, "the two ranks hung: one skipped a step the other took")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def _ddp_by_hand(local_first_pass: bool) -> dict:
    """Two ranks' SAM in one process: the perturbation from each rank's own gradient (m-sharpness) or from the
    all-reduced one, the second gradients averaged, one SGD step."""
    models = [_model(), _model()]
    base = _sgd(models[0].parameters())
    shards = [_batches(4, seed=10 + rank) for rank in range(2)]
    for start in (0, 2):
        groups = [shard[start:start + 2] for shard in shards]
        firsts = [_gradient(m, g) for m, g in zip(models, groups)]
        if not local_first_pass:
            mean = [(a + b) / 2 for a, b in zip(*firsts)]
            firsts = [mean, mean]
        seconds = []
        for model, group, g in zip(models, groups, firsts):
            with torch.no_grad():
                norm = torch.norm(torch.stack([gi.norm() for gi in g]))
                saved = [p.detach().clone() for p in model.parameters()]
                for p, gi in zip(model.parameters(), g):
                    p.add_(gi * (RHO / (norm + 1e-12)))
            seconds.append(_gradient(model, group))
            with torch.no_grad():
                for p, w in zip(model.parameters(), saved):
                    p.copy_(w)
        for p, a, b in zip(models[0].parameters(), *seconds):
            p.grad = (a + b) / 2
        base.step()
        models[1].load_state_dict(models[0].state_dict())
    return dict(models[0].named_parameters())


def test_under_ddp_each_rank_perturbs_along_its_own_gradient_and_the_second_pass_is_averaged(tmp_path):
    ranks = [result["weights"] for result in _spawn_two_ranks(tmp_path)]
    expected, all_reduced_first = _ddp_by_hand(True), _ddp_by_hand(False)
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f"the ranks disagree on {name}"
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    # Anchor: perturbing along the averaged gradient instead is measurably another update.
    assert max((ranks[0][n] - all_reduced_first[n]).abs().max() for n in expected) > 1e-5


# ------------------------------------------------------------------------------------------------- in a run
def test_a_sam_run_costs_two_passes_per_image_and_resumes_bit_identically(tmp_path, toy_conf, monkeypatch):
    extra = ["sam=sam", "trainer.epochs=2", "trainer.accumulate_steps=2", "trainer.resume=auto"]
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, extra)
    assert isinstance(straight.optimizer, SAM)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert_identical(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert straight.state.extra_passes == straight.state.train_samples == 2 * 256
    # A resumed run counts the images behind its training time (the stopped session's part epoch is not timed).
    assert resumed.state.extra_passes == resumed.state.train_samples
    assert metrics["passes_per_image"] == 2.0 and metrics["pass_img_per_s"] == pytest.approx(2 * metrics["img_per_s"])
    assert [record["throughput/passes_per_image"] for record in metrics["history"]] == [2.0, 2.0]
    # Anchor: the same run with plain SGD takes one pass per image and ends elsewhere.
    sgd = toy_trainer(toy_conf, tmp_path / "sgd", ["trainer.epochs=2", "trainer.accumulate_steps=2"])
    sgd.fit()
    assert sgd.state.extra_passes == 0
    assert not torch.equal(sgd.model.fc.weight, straight.model.fc.weight)


def test_sam_combines_with_swa_ema_and_cutmix_and_both_passes_see_the_same_mixed_batch(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", [
        "sam=asam", "mix=cutmix", "+callbacks=[ema,swa]", "callbacks.swa.start_epoch=1", "callbacks.swa.lr=0.01",
        "callbacks.swa.anneal_epochs=1", "trainer.epochs=2", "trainer.limit_train_batches=4"])
    seen = []
    forward = trainer.model.forward
    trainer.model.forward = lambda x: (seen.append(x.detach().clone()), forward(x))[1]
    result = trainer.fit()
    train_calls = [x for x in seen if len(x) == 16]  # the training batches (evaluation uses its own size)
    assert len(train_calls) == 2 * 4 * 2  # two passes for each of 4 steps in 2 epochs
    for first, second in zip(train_calls[::2], train_calls[1::2]):
        assert torch.equal(first, second)
    assert result["swa"] is not None and trainer.callbacks["swa"].swa.optimizer is trainer.optimizer.optimizer
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # SWALR set the base optimizer's lr
    assert result["passes_per_image"] == 2.0


def test_sam_with_lookahead_ends_at_lookaheads_average(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["sam=sam", "+callbacks=lookahead", "trainer.epochs=2",
                                                       "trainer.limit_train_batches=4"])
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.fit()
    # last.pt holds the weights after the last step (the final test may load best.pt's into the model).
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    for name, value in last["model"].items():
        if value.is_floating_point():
            assert torch.equal(value, last["callbacks"]["lookahead"]["average"][name]), name
    assert not torch.equal(last["model"]["fc.weight"], start["fc.weight"])


def test_rho_is_checked_with_the_config_before_anything_is_built():
    cfg = compose_config(["sam=sam", "sam.rho=0"])
    with pytest.raises(ConfigError, match=r"sam.rho=0 must be > 0"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"unknown config key sam.rh: did you mean sam.rho\?"):
        validate(compose_config(["sam=sam", "+sam.rh=0.1"]))


def test_under_ddp_an_fp16_overflow_on_one_rank_skips_the_step_on_both(tmp_path):
    """Each rank's first gradient is its own, so only rank 1 overflows: both must skip together (else rank 0 waits
    forever in the second pass's all-reduce), with the weights untouched and the same backed-off scale."""
    results = _spawn_two_ranks(tmp_path, overflow_on_rank_1=True)
    start = dict(_model().named_parameters())
    for result in results:
        assert result["scale"] == 2.0**7
        for name, value in result["weights"].items():
            assert torch.equal(value, start[name]), name
