"""Tests for batch mixing (Mixup/CutMix), EMA, SWA, distillation and TTA. All tiny and CPU-only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.callbacks.ema import ModelEma
from cifarbench.callbacks.swa import SwaState
from cifarbench.callbacks.tta import predict_with_tta, translate
from cifarbench.data.mixing import BatchMixer, mixed_accuracy_counts
from cifarbench.errors import ConfigError
from cifarbench.losses.distillation import distillation_loss, frozen_teacher


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 8, classes: int = 10, size: int = 8, seed: int = 0):
    g = _gen(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return images, labels


# ---------------------------------------------------------------- mixing


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


def test_torch_cross_entropy_applies_label_smoothing_to_soft_targets():
    # The trainer relies on F.cross_entropy(logits, soft, label_smoothing=ls) smoothing soft targets as
    # (1 - ls) * soft + ls / C; check it against the formula written out with plain math.
    logits = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]
    soft = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]
    ls, classes = 0.1, 3
    expected = 0.0
    for row, target in zip(logits, soft, strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected -= sum(((1 - ls) * t + ls / classes) * (v - log_z) for v, t in zip(row, target, strict=True))
    expected /= len(logits)
    got = F.cross_entropy(torch.tensor(logits), torch.tensor(soft), label_smoothing=ls)
    assert got.item() == pytest.approx(expected, rel=1e-6)


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


# ---------------------------------------------------------------- EMA


class _Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value], dtype=torch.float64))


def test_ema_matches_geometric_series_without_warmup():
    decay, e0 = 0.9, 1.0
    model = _Scalar(e0)
    ema = ModelEma(model, decay=decay, warmup=False)
    xs = [2.0, -1.0, 0.5, 3.0, 4.0]
    for x in xs:
        model.w.data.fill_(x)
        ema.update(model)
    n = len(xs)
    # e_n = d^n e_0 + (1 - d) * sum_k d^(n - k) x_k, k = 1..n
    expected = decay**n * e0 + (1 - decay) * sum(decay ** (n - k) * x for k, x in enumerate(xs, start=1))
    assert ema.module.w.item() == pytest.approx(expected, rel=1e-12)
    assert ema.num_updates == n


def test_ema_warmup_closed_form():
    decay, e0, c = 0.95, 0.0, 1.0
    model = _Scalar(e0)
    ema = ModelEma(model, decay=decay, warmup=True)
    model.w.data.fill_(c)
    for _ in range(40):
        ema.update(model)
    # With a constant target c: e_n = c + (e_0 - c) * prod_t d_t, d_t = min(decay, (1 + t) / (10 + t)).
    product = math.prod(min(decay, (1 + t) / (10 + t)) for t in range(40))
    assert ema.module.w.item() == pytest.approx(c + (e0 - c) * product, rel=1e-12)
    assert ema.current_decay() == pytest.approx(41 / 50)  # still warming up: (1 + 40) / (10 + 40) < 0.95
    ema.num_updates = 1000
    assert ema.current_decay() == decay  # capped once (1 + t) / (10 + t) passes the decay


def test_ema_update_every_skips_steps():
    model = _Scalar(0.0)
    ema = ModelEma(model, decay=0.5, warmup=False, update_every=3)
    model.w.data.fill_(1.0)
    done = [ema.update(model, step) for step in range(1, 10)]
    assert done == [False, False, True] * 3
    assert ema.num_updates == 3
    assert ema.module.w.item() == pytest.approx(1 - 0.5**3)


def test_ema_module_is_frozen_eval_copy_and_buffers_follow():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.5, warmup=False)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight is not model[0].weight
    model.train()
    model(torch.randn(16, 3, generator=_gen()))  # moves BN running stats
    ema.update(model)
    bn, ema_bn = model[1], ema.module[1]
    assert torch.allclose(ema_bn.running_mean, 0.5 * bn.running_mean)  # averaged from the initial zeros
    assert ema_bn.num_batches_tracked.item() == 1  # integer buffer copied


def test_ema_state_dict_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.999, warmup=True)
    for _ in range(5):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    resumed = ModelEma(model, decay=0.999, warmup=True)
    resumed.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert resumed.num_updates == 5
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
        resumed.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- SWA


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def test_swa_bn_update_sets_running_stats_to_data_statistics():
    torch.manual_seed(0)
    model = _bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = SwaState(model, optimizer, swa_lr=0.05, start_epoch=1)
    optimizer.step()  # as in training: the LR schedulers expect an optimizer step before theirs
    swa.after_epoch(1)
    g = _gen(1)
    channel_mean = torch.tensor([2.0, -1.0, 5.0]).view(1, 3, 1, 1)
    batches = [(torch.randn(8, 3, 4, 4, generator=g) * 0.5 + channel_mean, torch.zeros(8)) for _ in range(5)]
    bn = swa.module[0]
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert swa.finalize(batches)
    # update_bn uses a cumulative average; equal batch sizes make that the mean of the whole data.
    data = torch.cat([images for images, _ in batches])
    assert torch.allclose(bn.running_mean, data.mean(dim=(0, 2, 3)), atol=1e-5)
    batch_vars = torch.stack([images.var(dim=(0, 2, 3)) for images, _ in batches])  # unbiased, per batch
    assert torch.allclose(bn.running_var, batch_vars.mean(dim=0), atol=1e-5)
    assert bn.momentum == 0.1  # restored after the pass


def test_swa_averages_from_start_epoch_and_takes_over_lr():
    model = _Scalar(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    swa = SwaState(model, optimizer, swa_lr=0.1, start_epoch=3, anneal_epochs=2, anneal_strategy="linear")
    snapshots = []
    for epoch in range(1, 7):
        model.w.data.fill_(float(epoch))
        optimizer.step()
        averaged = swa.after_epoch(epoch)
        assert averaged == (epoch >= 3)
        assert swa.controls_lr == (epoch >= 3)
        if averaged:
            snapshots.append(float(epoch))
    assert swa.num_averaged == 4
    assert swa.module.w.item() == pytest.approx(sum(snapshots) / len(snapshots))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # annealed to swa_lr after anneal_epochs
    assert swa.finalize([])  # no BN layers: update_bn has nothing to do and must not fail


def test_swa_state_dict_round_trip(tmp_path):
    def run(epochs, swa, model):
        for epoch in epochs:
            model.w.data.fill_(float(epoch) ** 2)
            swa.optimizer.step()
            swa.after_epoch(epoch)

    model = _Scalar(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    swa = SwaState(model, optimizer, swa_lr=0.1, start_epoch=2, anneal_epochs=4)
    run(range(1, 4), swa, model)
    torch.save({"swa": swa.state_dict(), "opt": optimizer.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)

    model2 = _Scalar(0.0)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    swa2 = SwaState(model2, optimizer2, swa_lr=0.1, start_epoch=2, anneal_epochs=4)
    optimizer2.load_state_dict(state["opt"])
    swa2.load_state_dict(state["swa"])
    assert swa2.controls_lr and swa2.num_averaged == 2
    run(range(4, 7), swa, model)
    run(range(4, 7), swa2, model2)
    assert swa2.module.w.item() == swa.module.w.item()
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_swa_finalize_before_start_is_a_no_op():
    model = _bn_net()
    swa = SwaState(model, torch.optim.SGD(model.parameters(), lr=0.1), swa_lr=0.05, start_epoch=10)
    assert not swa.after_epoch(1)
    assert not swa.finalize([torch.randn(2, 3, 4, 4)])


# ---------------------------------------------------------------- distillation


def _log_softmax(row):
    log_z = math.log(sum(math.exp(v) for v in row))
    return [v - log_z for v in row]


def _hand_kd(student, teacher, hard_targets, temperature, alpha, ls=0.0):
    total = 0.0
    for s, t, target in zip(student, teacher, hard_targets, strict=True):
        log_ps = _log_softmax([v / temperature for v in s])
        log_pt = _log_softmax([v / temperature for v in t])
        kl = sum(math.exp(lt) * (lt - ls_) for lt, ls_ in zip(log_pt, log_ps, strict=True))
        log_p = _log_softmax(s)
        c = len(s)
        weights = [(1 - ls) * (1.0 if k == target else 0.0) + ls / c for k in range(c)]
        ce = -sum(w * lp for w, lp in zip(weights, log_p, strict=True))
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
    return total / len(student)


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_distillation_loss_equals_hand_computed_value(ls):
    student = [[1.0, 2.0, 0.0], [0.3, -0.5, 1.5]]
    teacher = [[0.5, 0.5, 2.0], [2.0, 0.0, -1.0]]
    targets = [1, 2]
    expected = _hand_kd(student, teacher, targets, temperature=4.0, alpha=0.7, ls=ls)
    got = distillation_loss(
        torch.tensor(student),
        torch.tensor(teacher),
        torch.tensor(targets),
        temperature=4.0,
        alpha=0.7,
        label_smoothing=ls,
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_distillation_accepts_soft_targets_and_only_trains_student():
    student = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.5, 0.5, 2.0]], requires_grad=True)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    soft = distillation_loss(student, teacher, one_hot, temperature=2.0, alpha=0.5)
    hard = distillation_loss(student, teacher, torch.tensor([1]), temperature=2.0, alpha=0.5)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    soft.backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(student, teacher, one_hot, temperature=0.0, alpha=0.5)


def test_frozen_teacher_is_eval_and_frozen():
    teacher = frozen_teacher(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------- TTA


def _asymmetric_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    ).eval()


def test_flip_tta_on_symmetric_input_equals_plain_output():
    model = _asymmetric_net()
    x = torch.randn(4, 3, 6, 6, generator=_gen())
    symmetric = x + x.flip(-1)
    plain = model(symmetric)
    assert torch.equal(predict_with_tta(model, symmetric, "none"), plain)
    assert torch.equal(predict_with_tta(model, symmetric, "flip"), plain)
    assert not torch.allclose(predict_with_tta(model, x, "flip"), model(x))  # the net is not flip-invariant


class _Recorder(nn.Module):
    """Records its inputs; its logit is the index of the call, so the output reveals the view weights."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.full((x.shape[0], 2), float(len(self.inputs) - 1))


def _shifted_by_index(x: torch.Tensor, shift: int) -> torch.Tensor:
    # out[i, j] = x[reflect(i - shift), reflect(j - shift)], with reflect(-1) = 1 and reflect(n) = n - 2.
    n = x.shape[-1]

    def reflect(k):
        return -k if k < 0 else 2 * (n - 1) - k if k >= n else k

    out = torch.empty_like(x)
    for i in range(n):
        for j in range(n):
            out[..., i, j] = x[..., reflect(i - shift), reflect(j - shift)]
    return out


def test_translate_moves_content_with_reflection():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    for shift in (-2, -1, 1, 2):
        assert torch.equal(translate(x, shift), _shifted_by_index(x, shift))
    assert torch.equal(translate(x, 0), x)


def test_flip_translate_runs_six_weighted_views():
    x = torch.randn(3, 3, 6, 6, generator=_gen())
    recorder = _Recorder()
    out = predict_with_tta(recorder, x, "flip_translate")
    expected_views = [
        x,
        x.flip(-1),
        _shifted_by_index(x, -1),
        _shifted_by_index(x, -1).flip(-1),
        _shifted_by_index(x, 1),
        _shifted_by_index(x, 1).flip(-1),
    ]
    assert len(recorder.inputs) == 6
    for seen, expected in zip(recorder.inputs, expected_views, strict=True):
        assert torch.equal(seen, expected)
    # Weights 1/4, 1/4, 1/8 x 4 on logits 0..5.
    assert torch.allclose(out, torch.full((3, 2), 0.25 * 0 + 0.25 * 1 + 0.125 * (2 + 3 + 4 + 5)))
    recorder.inputs.clear()
    predict_with_tta(recorder, x, "flip")
    assert len(recorder.inputs) == 2


def test_unknown_tta_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="flip_translate"):
        predict_with_tta(_Recorder(), torch.zeros(1, 3, 4, 4), "rotate")
