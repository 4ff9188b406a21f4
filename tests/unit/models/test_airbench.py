"""experiment=airbench94: each piece against the reference implementation (the `airbench` package, 0.1.8), and a
CI-sized training run (its exact resume after SIGKILL is in e2e/test_resume.py).

The reference's network builder and training loop move everything to CUDA; these tests call its CPU-safe helpers
(whitening, lookahead, inference with TTA) directly, build its network with `.cuda()` made a no-op, and recompute its
learning-rate "triangle", a closure inside its `train`, from the published formula.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cifarbench.callbacks.lookahead import Lookahead
from cifarbench.callbacks.tta import predict_with_tta
from cifarbench.models.airbench import Airbench94
from cifarbench.optim.schedules import piecewise_linear
from tests.helpers.config import airbench_recipe, compose_config
from tests.helpers.data import write_cifar10

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


@pytest.mark.parametrize(("experiment", "epochs"), [("airbench94", 9.9), ("airbench95", 15.0), ("airbench96", 40.0)])
def test_lr_factors_per_step_equal_the_reference_triangle(experiment, epochs):
    """The reference's `train` builds this triangle over ceil(len(loader) x epochs) steps (48 batches of 1,024 per
    epoch); ours comes from the recipe's own config (its epochs and knots)."""
    import importlib

    reference = importlib.import_module(f"airbench.lib_{experiment}").hyp["opt"]["train_epochs"]
    cfg = compose_config([f"experiment={experiment}"])
    assert float(cfg.trainer.epochs) == reference == epochs
    total = math.ceil(48 * epochs)  # airbench: ceil(len(loader) * epochs) steps
    xp, fp = torch.tensor([0, int(0.23 * total), total]), torch.tensor([0.2, 1.0, 0.07])
    x = torch.arange(total + 1)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    index = (torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1).clamp(0, len(m) - 1)
    triangle = m[index] * x + b[index]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = piecewise_linear(optimizer, steps_per_epoch=48, epochs=float(cfg.trainer.epochs),
                                knots=[list(knot) for knot in cfg.scheduler.knots])
    ours = torch.tensor([schedule.lr_lambdas[0](step) for step in range(total + 1)])
    torch.testing.assert_close(ours, triangle.double(), rtol=1e-6, atol=1e-7, check_dtype=False)


@pytest.mark.parametrize("experiment", ["airbench95", "airbench96"])
def test_the_wider_recipes_take_the_reference_hyperparameters(experiment):
    """lr and weight decay per 1,024 examples in airbench's decoupled form, written for torch's SGD as the
    airbench94 recipe does; label smoothing, momentum, bias scaler and the whitening-bias epochs unchanged."""
    import importlib

    hyp = importlib.import_module(f"airbench.lib_{experiment}").hyp
    opt = hyp["opt"]
    cfg = compose_config([f"experiment={experiment}"])
    scale = 1024 * (1 + 1 / (1 - opt["momentum"]))
    assert cfg.optimizer.lr == pytest.approx(opt["lr"] / scale, rel=1e-12)
    assert cfg.optimizer.lr * cfg.optimizer.weight_decay == pytest.approx(opt["weight_decay"] * 1024 / scale)
    assert cfg.optimizer.momentum == opt["momentum"] and cfg.trainer.batch_size == opt["batch_size"]
    assert cfg.loss.label_smoothing == opt["label_smoothing"] and cfg.loss.reduction == "sum"
    assert cfg.param_groups.norm_biases.lr_scale == opt["bias_scaler"]
    assert cfg.param_groups.whitening_bias.train_epochs == opt["whiten_bias_epochs"]
    assert list(cfg.model.widths) == list(hyp["net"]["widths"].values())
    assert cfg.model.bn_momentum == pytest.approx(1 - hyp["net"]["batchnorm_momentum"])
    assert cfg.callbacks.tta.mode == "flip_translate" and hyp["net"]["tta_level"] == 2
    assert cfg.augment.crop.padding == hyp["aug"]["translate"]
    assert (cfg.augment.get("cutout") or {}).get("length", 0) == hyp["aug"].get("cutout", 0)


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


@pytest.mark.parametrize(("experiment", "count"), [("airbench94", 1972792), ("airbench95", 4606520),
                                                   ("airbench96", 12721208)])
def test_the_network_has_the_reference_parameters(monkeypatch, experiment, count):
    import importlib

    monkeypatch.setattr(nn.Module, "cuda", lambda self, *args, **kwargs: self)
    number = experiment.removeprefix("airbench")
    reference = getattr(importlib.import_module(f"airbench.lib_{experiment}"), f"make_net{number}")()
    ours = compose_config([f"experiment={experiment}"])
    model = Airbench94(widths=list(ours.model.widths), residual=bool(ours.model.residual))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == count
    shapes = sorted(tuple(p.shape) for p in reference.parameters())
    assert sorted(tuple(p.shape) for p in model.parameters()) == shapes
    trainable = sorted(tuple(p.shape) for p in reference.parameters() if p.requires_grad)
    assert sorted(tuple(p.shape) for p in model.parameters() if p.requires_grad) == trainable


def test_the_residual_network_computes_what_the_reference_make_net96_computes(monkeypatch):
    """The same weights (copied in order: both declare conv1, norm1, conv2, norm2, conv3, norm3 per group) give the
    same logits, in training mode (batch statistics) and in eval mode: the shortcut sits where the reference's does."""
    import airbench.lib_airbench96 as reference_lib

    monkeypatch.setattr(nn.Module, "cuda", lambda self, *args, **kwargs: self)
    torch.manual_seed(0)
    reference = reference_lib.make_net96(widths={"block1": 16, "block2": 32, "block3": 32}).float()
    ours = Airbench94(widths=[16, 32, 32], residual=True, bn_momentum=0.4)
    theirs = list(reference.state_dict().values())
    mine = ours.state_dict()
    assert [tuple(t.shape) for t in theirs] == [tuple(t.shape) for t in mine.values()]
    ours.load_state_dict(dict(zip(mine, (t.float() for t in theirs))))
    images = torch.randn(6, 3, 32, 32)
    for train in (True, False):
        reference.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(images), reference(images), rtol=1e-5, atol=1e-5)


def _same_distribution(ours: torch.Tensor, theirs: torch.Tensor, values: range) -> None:
    """Both samples take exactly `values`, and a chi-square test of homogeneity does not tell them apart."""
    from scipy.stats import chi2_contingency

    counts = [[int((sample == v).sum()) for v in values] for sample in (ours, theirs)]
    assert set(ours.unique().tolist()) == set(theirs.unique().tolist()) == set(values)
    assert chi2_contingency(counts).pvalue > 1e-3, counts


def test_translate_4_and_cutout_12_match_the_reference_distributions():
    """airbench96's augmentation against the reference's own functions on the same images: the translation offsets
    (read off a coordinate-coded image: the centre pixel shows where it came from) and the Cutout squares (every
    mask 12 x 12 = 144 pixels, its top-left corner over the same 21 x 21 positions)."""
    from airbench.utils import batch_crop, make_random_square_masks

    from cifarbench.data.augment.pipeline import build_ops

    cfg = compose_config(["experiment=airbench96"])
    ops = dict(zip(cfg.augment.keys(), build_ops(cfg.augment)))
    n = 8000
    rows = torch.arange(32).view(1, 1, 32, 1).expand(n, 1, 32, 32)
    cols = torch.arange(32).view(1, 1, 1, 32).expand(n, 1, 32, 32)
    coded = torch.cat([rows, cols, torch.zeros_like(rows)], 1).float()
    generator = torch.Generator().manual_seed(0)
    ours = ops["crop"](coded, generator)[:, :2, 16, 16] - 16
    torch.manual_seed(0)
    padded = torch.nn.functional.pad(coded, (4,) * 4, "reflect")
    theirs = batch_crop(padded, 32)[:, :2, 16, 16] - 16
    for axis in (0, 1):
        _same_distribution(ours[:, axis], theirs[:, axis], range(-4, 5))

    cutout = ops["cutout"]
    our_masks = cutout.sample_mask(n, 32, 32, generator, torch.device("cpu"))
    their_masks = make_random_square_masks(torch.zeros(n, 3, 32, 32), 12)[:, 0]
    assert (our_masks.sum((1, 2)) == 144).all() and (their_masks.sum((1, 2)) == 144).all()

    def corners(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return masks.any(2).float().argmax(1), masks.any(1).float().argmax(1)  # first masked row, column

    for mine, reference in zip(corners(our_masks), corners(their_masks)):
        _same_distribution(mine, reference, range(0, 21))


# ----------------------------------------------------------------------------------------- runs (CPU)
@pytest.mark.slow
def test_the_recipe_trains_and_the_loss_falls(tmp_path):
    from cifarbench.engine.trainer import Trainer

    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    # Narrower than the recipe (the schedule, the freezing and the TTA test do not depend on the widths): 4x less work.
    trainer = Trainer(compose_config(airbench_recipe(root) + ["trainer.epochs=4", "model.widths=[32,128,128]"]),
                      tmp_path / "run", {})
    assert trainer.optimizer.param_groups[0]["name"] == "whitening_bias"
    result = trainer.fit()
    losses = [h["train/loss"] for h in result["history"]]
    assert losses[-1] < losses[0] * 0.8 and losses[0] < 3, losses  # logged per image, though the loss is summed
    assert trainer.state.global_step == 12 and len(result["history"]) == 4
    assert not trainer.model.whiten.bias.requires_grad  # frozen after its 3 epochs
    assert [h.get("test/acc") is not None for h in result["history"]] == [False, False, False, True]


def test_the_add_then_gelu_group_of_airbench96_faster_is_written_out_here():
    """airbench96_faster's groups add the shortcut before the last GELU (the package's airbench96 after it); the
    group's output written out with its own layers."""
    from torch.nn.functional import gelu

    from cifarbench.models.airbench import ConvGroup

    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, 16)
    for mode in ("add_then_gelu", "gelu_then_add"):
        group = ConvGroup(8, 16, 0.1, residual=mode).eval()
        for norm in (group.norm1, group.norm2, group.norm3):  # statistics that are not the identity
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.bias.data.uniform_(-0.2, 0.2)
        first = gelu(group.norm1(group.pool(group.conv1(x))))
        third = group.norm3(group.conv3(gelu(group.norm2(group.conv2(first)))))
        expected = gelu(third + first) if mode == "add_then_gelu" else gelu(third) + first
        torch.testing.assert_close(group(x), expected)


@pytest.mark.slow
def test_airbench96_faster_trains_the_main_network_on_the_kept_half(tmp_path):
    """The recipe through the trainer on 400 CIFAR-format images (batches of 128, 64 kept): selection, proxy steps
    every 4 batches on the kept ones, lookahead and the residual groups together; the counts say what trained."""
    from cifarbench.engine.trainer import Trainer

    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    overrides = airbench_recipe(root, "airbench96_faster") + [
        "trainer.epochs=2", "callbacks.data_selection.keep=64", "model.widths=[16,32,32]"]
    result = Trainer(compose_config(overrides), tmp_path / "run", {}).fit()
    assert result["status"] == "completed" and result["test"]["acc"] > 0
    assert result["data_selection"] == {"kept_per_batch": "64 examples", "proxy_forward_images": 6 * 128,
                                        "proxy_backward_images": 2 * 64}  # steps 1 and 5 of 6
    assert result["history"][-1]["throughput/img_per_s"] > 0
