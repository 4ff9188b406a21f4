"""experiment=airbench94: each piece against the reference implementation (the `airbench` package, 0.1.8), and a
CI-sized training run (its exact resume after SIGKILL is in test_faults.py).

The reference's network builder and training loop move everything to CUDA; these tests call its CPU-safe helpers
(whitening, lookahead, inference with TTA) directly, build its network with `.cuda()` made a no-op, and recompute its
learning-rate "triangle", a closure inside its `train`, from the published formula.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import airbench_recipe, compose_config, write_cifar10
from torch import nn

from cifarbench.callbacks.lookahead import Lookahead
from cifarbench.callbacks.tta import predict_with_tta
from cifarbench.models.airbench import Airbench94
from cifarbench.optim.schedules import piecewise_linear

airbench_utils = pytest.importorskip("airbench.utils", reason="pip install airbench==0.1.8 (a dev dependency)")


def normalised_images(count: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Correlated channels and neighbouring pixels, as in real images, so the covariance is far from the identity.
    base = torch.rand(count, 1, 33, 33, generator=generator)
    smooth = (base[..., 1:, 1:] + base[..., :-1, :-1]) / 2
    colour = torch.rand(count, 3, 1, 1, generator=generator)
    return (smooth * (0.5 + colour) + 0.1 * torch.randn(count, 3, 32, 32, generator=generator) - 0.5) / 0.25


def test_whitening_filters_equal_the_reference():
    images = normalised_images()
    ours = Airbench94()
    ours.init_from_data(images)
    reference = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    airbench_utils.init_whitening_conv(reference, images, eps=5e-4)
    torch.testing.assert_close(ours.whiten.weight, reference.weight, rtol=0, atol=0)


def test_whitened_patches_have_identity_covariance():
    images = normalised_images(256)
    model = Airbench94()
    model.init_from_data(images)
    with torch.no_grad():
        out = nn.functional.conv2d(images, model.whiten.weight[:12])  # the positive half of the filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    # eps = 5e-4 shrinks only directions of variance comparable to it; these patches have none that small.
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.02, rtol=0)


def test_lookahead_update_and_decay_schedule_equal_the_reference():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    ours_net, reference_net = net, copy.deepcopy(net)
    lookahead = Lookahead()
    lookahead.total_steps = 476
    lookahead.average = {k: v.detach().clone() for k, v in ours_net.state_dict().items()}
    reference = airbench_utils.LookaheadState(reference_net)
    published = 0.95**5 * (torch.arange(477) / 476) ** 3  # the reference's alpha_schedule
    for step in (5, 10, 240, 475, 476):
        with torch.no_grad():
            for a, b in zip(ours_net.parameters(), reference_net.parameters()):
                noise = torch.randn_like(a)
                a.add_(noise)
                b.add_(noise)
        decay = lookahead.decay(step)
        assert decay == pytest.approx(published[step].item(), rel=1e-6)
        lookahead.update(ours_net, decay)
        reference.update(reference_net, decay=decay)
        for (name, a), b in zip(ours_net.state_dict().items(), reference_net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_lr_factors_per_step_equal_the_reference_triangle():
    total = math.ceil(48 * 9.9)  # airbench: ceil(len(loader) * epochs) steps
    xp, fp = torch.tensor([0, int(0.23 * total), total]), torch.tensor([0.2, 1.0, 0.07])
    x = torch.arange(total + 1)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    index = (torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1).clamp(0, len(m) - 1)
    triangle = m[index] * x + b[index]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = piecewise_linear(optimizer, steps_per_epoch=48, epochs=9.9, knots=[[0, 0.2], [0.23, 1.0], [1, 0.07]])
    ours = torch.tensor([schedule.lr_lambdas[0](step) for step in range(total + 1)])
    torch.testing.assert_close(ours, triangle.double(), rtol=1e-6, atol=1e-7, check_dtype=False)


def test_tta_logits_equal_the_reference_level_2():
    torch.manual_seed(0)
    model = Airbench94().eval()
    images = torch.randn(8, 3, 32, 32)

    class Loader:  # what infer() reads: images and a normalisation
        def __init__(self, images):
            self.images = images

        def normalize(self, images):
            return images

    reference = airbench_utils.infer(model, Loader(images), tta_level=2)
    ours = predict_with_tta(model, images, "flip_translate")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_the_network_has_the_reference_parameters(monkeypatch):
    import airbench

    monkeypatch.setattr(nn.Module, "cuda", lambda self, *args, **kwargs: self)
    reference = airbench.make_net94()
    ours = compose_config(["experiment=airbench94"])
    model = Airbench94(widths=list(ours.model.widths))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 1972792
    shapes = sorted(tuple(p.shape) for p in reference.parameters())
    assert sorted(tuple(p.shape) for p in model.parameters()) == shapes
    trainable = sorted(tuple(p.shape) for p in reference.parameters() if p.requires_grad)
    assert sorted(tuple(p.shape) for p in model.parameters() if p.requires_grad) == trainable


# ----------------------------------------------------------------------------------------- runs (CPU)
@pytest.mark.slow
def test_the_recipe_trains_and_the_loss_falls(tmp_path):
    from cifarbench.engine.trainer import Trainer

    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    trainer = Trainer(compose_config(airbench_recipe(root) + ["trainer.epochs=4"]), tmp_path / "run", {})
    assert trainer.optimizer.param_groups[0]["name"] == "whitening_bias"
    result = trainer.fit()
    losses = [h["train/loss"] for h in result["history"]]
    assert losses[-1] < losses[0] * 0.8 and losses[0] < 3, losses  # logged per image, though the loss is summed
    assert trainer.state.global_step == 12 and len(result["history"]) == 4
    assert not trainer.model.whiten.bias.requires_grad  # frozen after its 3 epochs
    assert [h.get("test/acc") is not None for h in result["history"]] == [False, False, False, True]


# ------------------------------------------------------------------------ the general pieces it brought
def test_no_decay_param_groups_exempt_norms_and_biases():
    from cifarbench.config import build
    from cifarbench.optim.param_groups import build_param_groups

    cfg = compose_config(["+param_groups=no_decay", "model=resnet20"])
    model = build(cfg.model)
    groups = {g["name"]: g for g in build_param_groups(model, dict(cfg.param_groups), lr=0.1, weight_decay=5e-4)}
    assert set(groups) == {"no_decay_norms", "no_decay_biases", "default"}
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(groups["no_decay_norms"]["params"]) == 2 * len(norms)
    assert groups["no_decay_norms"]["weight_decay"] == 0
    assert groups["no_decay_biases"]["params"] == [model.head.fc.bias]
    assert groups["no_decay_biases"]["weight_decay"] == 0
    assert all(p.dim() > 1 for p in groups["default"]["params"]) and groups["default"]["weight_decay"] == 5e-4
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_a_param_group_rule_that_matches_nothing_is_a_clear_error():
    from cifarbench.errors import ConfigError
    from cifarbench.optim.param_groups import build_param_groups

    with pytest.raises(ConfigError, match=r"param_groups.typo matches no trainable parameter"):
        build_param_groups(Airbench94(), {"typo": {"params": ["whitten.bias"]}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x has unknown key\(s\) learning_rate"):
        build_param_groups(Airbench94(), {"x": {"learning_rate": 1}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x gives both lr and lr_scale"):
        build_param_groups(Airbench94(), {"x": {"lr": 1, "lr_scale": 2}}, lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"param_groups.x.optimizer='muon' names no optimizer"):
        build_param_groups(Airbench94(), {"x": {"ndim": 4, "optimizer": "muon"}}, lr=0.1, weight_decay=0.0)


def test_the_airbench94_groups_scale_lr_and_decay_as_published():
    from cifarbench.optim.param_groups import apply_training_windows, build_param_groups

    cfg = compose_config(["experiment=airbench94"])
    model = Airbench94()
    groups = build_param_groups(model, dict(cfg.param_groups), lr=cfg.optimizer.lr,
                                weight_decay=cfg.optimizer.weight_decay)
    by_name = {g["name"]: g for g in groups}
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay_per_step = 11.5 / kilostep, 0.0153 * 1024 / kilostep  # the reference's lr and lr x weight decay
    assert by_name["default"]["lr"] == pytest.approx(lr)
    assert by_name["default"]["lr"] * by_name["default"]["weight_decay"] == pytest.approx(decay_per_step)
    norm = by_name["norm_biases"]
    assert norm["lr"] == pytest.approx(64 * lr) and norm["lr"] * norm["weight_decay"] == pytest.approx(decay_per_step)
    assert by_name["whitening_bias"]["params"] == [model.whiten.bias]
    # Frozen tensors (the whitening filters, the BatchNorm scales) are in no group.
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters()) == 14
    optimizer = torch.optim.SGD(groups, lr=lr)
    apply_training_windows(optimizer, epochs_done=2)
    assert model.whiten.bias.requires_grad
    apply_training_windows(optimizer, epochs_done=3)
    assert not model.whiten.bias.requires_grad and model.head.weight.requires_grad


@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon"])
def test_norm_rules_match_the_synced_batchnorm_of_trainer_sync_batchnorm(experiment):
    """trainer.sync_batchnorm=true swaps every BatchNorm2d for torch.nn.SyncBatchNorm (not a BatchNorm2d): the
    recipes' `modules: [torch.nn.BatchNorm2d]` rule must give the same groups to the synced model."""
    from cifarbench.optim.param_groups import build_param_groups

    cfg = compose_config([f"experiment={experiment}"])
    rules = {name: dict(rule) for name, rule in cfg.param_groups.items()}
    muon = {"muon": (0.24, 0.0)} if experiment == "airbench94_muon" else None
    plain = Airbench94()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in synced.modules())
    names = {}
    for tag, model in (("plain", plain), ("synced", synced)):
        lookup = {id(p): n for n, p in model.named_parameters()}
        groups = build_param_groups(model, rules, lr=0.1, weight_decay=0.0, optimizers=muon)
        names[tag] = {g["name"]: sorted(lookup[id(p)] for p in g["params"]) for g in groups}
    assert names["synced"] == names["plain"]
    assert len(names["synced"]["norm_biases"]) == 6  # the six BatchNorm biases of the three conv groups


def test_the_alternating_flip_is_a_fixed_coin_per_image_mirrored_every_other_epoch():
    from cifarbench.data.augment import AlternatingFlip

    op = AlternatingFlip()
    images = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 1, 2, 2).clone()
    images[:, :, :, 1] = 255  # the right column marks which way round an image is
    index = torch.arange(100, 164)

    def flipped(epoch, seed=0):
        return op(images, None, index=index, epoch=epoch, seed=seed)[:, 0, 0, 0] == 255

    first = flipped(1)
    assert 16 < int(first.sum()) < 48  # a coin per image
    assert torch.equal(flipped(2), ~first) and torch.equal(flipped(3), first) and torch.equal(flipped(4), ~first)
    assert torch.equal(flipped(1), first)  # the same from (seed, index, epoch) alone: exact on resume
    assert not torch.equal(flipped(1, seed=1), first)
    with pytest.raises(Exception, match="dataset.loader=device"):
        op.torchvision((0.5,), (0.5,))


def test_a_summed_loss_trains_on_the_sum_and_logs_the_mean():
    from cifarbench.losses.cross_entropy import CrossEntropy

    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    summed = CrossEntropy(0.2, reduction="sum")(logits, labels, None)
    mean = CrossEntropy(0.2)(logits, labels, None)
    torch.testing.assert_close(summed, 8 * mean)


def test_the_cpu_allocator_keeps_freed_memory_on_glibc():
    import platform

    from cifarbench.device import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert keep_freed_memory() is True and keep_freed_memory(enabled=True) is True


def test_lookahead_counts_the_optimizer_steps_that_accumulation_makes(tmp_path):
    """5 micro-batches an epoch in groups of 2 make 3 optimizer steps (the short last group steps too): the model
    becomes the average at the run's real last step, not one step before it (which the next step would undo)."""
    from cifarbench.engine.trainer import Trainer

    overrides = ["model=simple_cnn", "dataset=synthetic", "dataset.source.train_size=80", "dataset.source.test_size=16",
                 "trainer.batch_size=16", "trainer.accumulate_steps=2", "trainer.epochs=2", "+callbacks=lookahead",
                 "trainer.device=cpu", "trainer.progress_bar=false", "~callbacks.tensorboard_extras"]
    trainer = Trainer(compose_config(overrides), tmp_path / "run", {})
    trainer.fit()
    assert trainer.state.global_step == 6 == trainer.callbacks["lookahead"].total_steps
    for name, tensor in trainer.model.state_dict().items():
        if tensor.is_floating_point():  # counters such as num_batches_tracked are not averaged
            assert torch.equal(tensor, trainer.callbacks["lookahead"].average[name]), name
