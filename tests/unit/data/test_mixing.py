"""cifarbench.data.mixing: Mixup/CutMix batch mixing, mixed accuracy, and a run that mixes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cifarbench.data.mixing import BatchMixer, mixed_accuracy_counts
from cifarbench.engine.trainer import Trainer
from cifarbench.errors import ConfigError
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.runs import train_in_process
from tests.helpers.tensors import _gen


def test_mixup_cutmix_run_reports_accuracy_against_the_dominant_label(tmp_path, cifar_root, monkeypatch):
    """train/acc under mixing: the share of images whose prediction is the class with the larger mixing weight,
    counted here from the very logits and targets of every step."""
    counted = {"correct": 0, "seen": 0}
    original = Trainer.train_step

    def recording_step(self, *args, **kwargs):
        loss, logits, targets = original(self, *args, **kwargs)
        assert targets.ndim == 2, "mixing gives soft targets"
        counted["correct"] += int((logits.argmax(dim=1) == targets.argmax(dim=1)).sum())
        counted["seen"] += len(targets)
        return loss, logits, targets

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["mix=mixup_cutmix", "loss.label_smoothing=0.1"],
                              tmp_path / "run")
    assert counted["seen"] == 192 and counted["correct"] > 0
    assert result["final"]["train/acc"] == pytest.approx(counted["correct"] / counted["seen"])
    assert result["final"]["train/loss"] > 0


def _batch(n: int = 8, classes: int = 10, size: int = 8, seed: int = 0):
    g = _gen(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return images, labels


def test_mixer_disabled_when_both_alphas_zero():
    assert not BatchMixer(num_classes=10).enabled
    assert BatchMixer(num_classes=10, mixup_alpha=0.2).enabled
    assert BatchMixer(num_classes=10, cutmix_alpha=1.0).enabled


def test_mixer_rejects_bad_config():
    with pytest.raises(ConfigError, match="mixup_alpha"):
        BatchMixer(num_classes=10, mixup_alpha=-1.0)
    with pytest.raises(ConfigError, match="switch_prob"):
        BatchMixer(num_classes=10, mixup_alpha=1.0, switch_prob=1.5)


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both", "off"])
def test_mixed_targets_are_distributions(kind):
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0), "off": (0.0, 0.0)}[kind]
    mixer = BatchMixer(num_classes=10, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    images, labels = _batch(n=7)  # odd: the middle image is paired with itself
    for seed in range(20):
        mixed, targets = mixer(images, labels, _gen(seed))
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        assert targets.shape == (7, 10) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(dim=1), torch.ones(7))
        assert (targets >= 0).all()
        # The weight of each image's own class is at least lam, the weight of the partner's class at least 1-lam.
        own = targets.gather(1, labels[:, None]).squeeze(1)
        partner = targets.gather(1, labels.flip(0)[:, None]).squeeze(1)
        assert torch.allclose(
            own[labels != labels.flip(0)] + partner[labels != labels.flip(0)], torch.ones(1)
        )


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both", "off"])
def test_each_class_weight_is_the_share_of_its_image_in_the_mix(kind):
    """Image i is constant i + 1, so a mixed image's mean value says how much of it came from each image: the
    target weights must be those shares (a mix weighted 1 - lam instead of lam fails here)."""
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0), "off": (0.0, 0.0)}[kind]
    mixer = BatchMixer(num_classes=4, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    images = torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    labels = _distinct_labels(4)
    uneven = 0
    for seed in range(30):
        mixed, targets = mixer(images, labels, _gen(seed))
        own, partner = targets[torch.arange(4), labels], targets[torch.arange(4), labels.flip(0)]
        expected = own * images[:, 0, 0, 0] + partner * images.flip(0)[:, 0, 0, 0]
        assert torch.allclose(mixed.mean(dim=(1, 2, 3)), expected, atol=1e-5), seed
        uneven += int(abs(own[0] - 0.5) > 0.05)
    assert uneven > 0 if kind != "off" else torch.equal(mixed, images)


def test_mixer_is_reproducible_and_does_not_modify_inputs():
    mixer = BatchMixer(num_classes=10, mixup_alpha=0.4, cutmix_alpha=1.0)
    images, labels = _batch()
    before = images.clone()
    a = mixer(images, labels, _gen(3))
    b = mixer(images, labels, _gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(images, before)


def _distinct_labels(n: int = 4):
    # Partner labels (reversed batch) always differ from the image's own label.
    return torch.arange(n)


def test_mixup_blends_images_with_the_lam_of_the_targets():
    mixer = BatchMixer(num_classes=4, mixup_alpha=0.4)
    images, _ = _batch(n=4)
    labels = _distinct_labels(4)
    mixed, targets = mixer(images, labels, _gen(1))
    lam = targets[0, 0].item()
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    assert torch.allclose(targets[0, 3], torch.tensor(1 - lam))


def test_cutmix_lam_matches_the_pasted_area():
    mixer = BatchMixer(num_classes=4, cutmix_alpha=1.0)
    size = 16
    # Image i is constant i+1, so every pixel tells which image it came from.
    images = torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, size, size).contiguous()
    labels = _distinct_labels(4)
    seen_partial_box = False
    for seed in range(50):
        mixed, targets = mixer(images, labels, _gen(seed))
        from_partner = (mixed[0] == images[3]).all(dim=0)  # (H, W)
        from_self = (mixed[0] == images[0]).all(dim=0)
        assert (from_partner | from_self).all()  # CutMix copies pixels, never blends
        area = from_partner.float().mean().item()
        assert targets[0, 3].item() == pytest.approx(area, abs=1e-6)
        assert targets[0, 0].item() == pytest.approx(1 - area, abs=1e-6)
        seen_partial_box |= 0 < area < 1
        # The pasted region is one axis-aligned rectangle.
        rows, cols = from_partner.any(dim=1), from_partner.any(dim=0)
        assert from_partner.sum() == rows.sum() * cols.sum()
    assert seen_partial_box


def _lams(mixer: BatchMixer, draws: int) -> torch.Tensor:
    images, _ = _batch(n=2, size=4)
    labels = _distinct_labels(2)
    g = _gen(123)
    return torch.tensor([mixer(images, labels, g)[1][0, 0].item() for _ in range(draws)])


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_lam_follows_beta_alpha(alpha):
    lams = _lams(BatchMixer(num_classes=2, mixup_alpha=alpha), 3000)
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lams.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), abs=0.01)
    if alpha == 2.0:
        # Kolmogorov-Smirnov distance to the Beta(2, 2) CDF 3x^2 - 2x^3 (seeded, so deterministic).
        x = lams.sort().values.double()
        cdf = 3 * x**2 - 2 * x**3
        n = len(x)
        ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
        distance = torch.maximum((ecdf_hi - cdf).abs(), (cdf - (ecdf_hi - 1 / n)).abs()).max().item()
        assert distance < 1.63 / math.sqrt(n)  # the 1% critical value


def test_switch_prob_chooses_cutmix():
    images, _ = _batch(n=4)
    labels = _distinct_labels(4)

    def is_cutmix(mixed):  # CutMix pixels come from one image or the other, never a blend
        return bool(((mixed == images) | (mixed == images.flip(0))).all())

    always_cut = BatchMixer(num_classes=4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    never_cut = BatchMixer(num_classes=4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0)
    assert all(is_cutmix(always_cut(images, labels, _gen(s))[0]) for s in range(10))
    assert not any(is_cutmix(never_cut(images, labels, _gen(s))[0]) for s in range(10))
    half = BatchMixer(num_classes=4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    g = _gen(7)
    rate = sum(is_cutmix(half(images, labels, g)[0]) for _ in range(400)) / 400
    assert rate == pytest.approx(0.5, abs=0.08)


def test_prob_zero_leaves_batch_unmixed():
    mixer = BatchMixer(num_classes=10, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)
    images, labels = _batch()
    mixed, targets = mixer(images, labels, _gen())
    assert torch.equal(mixed, images)
    assert torch.equal(targets, F.one_hot(labels, 10).float())


def test_mixup_needs_float_images():
    mixer = BatchMixer(num_classes=10, mixup_alpha=1.0)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="float"):
        mixer(images, torch.arange(4), _gen())


def test_mixed_accuracy_counts_against_dominant_class():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor(
        [
            [0.8, 0.2, 0.0],  # predicts the dominant class: correct
            [0.7, 0.3, 0.0],  # predicts the minor class: not correct
            [0.0, 0.0, 1.0],  # unmixed: correct
            [0.4, 0.6, 0.0],  # predicts the minor class: not correct
        ]
    )
    count = mixed_accuracy_counts(logits, targets)
    assert count.dtype == torch.int64 and count.ndim == 0 and count.item() == 2
    assert mixed_accuracy_counts(logits, torch.tensor([0, 1, 0, 0])).item() == 3  # integer labels work too
