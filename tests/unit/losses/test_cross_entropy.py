"""cifarbench.losses.cross_entropy: label smoothing, soft targets and the reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F


def test_a_summed_loss_trains_on_the_sum_and_logs_the_mean():
    from cifarbench.losses.cross_entropy import CrossEntropy

    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    summed = CrossEntropy(0.2, reduction="sum")(logits, labels, None)
    mean = CrossEntropy(0.2)(logits, labels, None)
    torch.testing.assert_close(summed, 8 * mean)


def test_the_cross_entropy_loss_applies_label_smoothing_and_its_reduction():
    from cifarbench.losses.cross_entropy import CrossEntropy

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    log_probs = logits.log_softmax(dim=1)
    nll = -log_probs[torch.arange(6), labels]
    smoothed = 0.8 * nll + 0.2 * -log_probs.mean(dim=1)  # (1 - ls) * NLL + ls * mean over classes
    images = torch.zeros(6, 3, 2, 2)
    assert float(CrossEntropy(label_smoothing=0.2)(logits, labels, images)) == pytest.approx(float(smoothed.mean()))
    assert float(CrossEntropy(label_smoothing=0.2, reduction="sum")(logits, labels, images)) == pytest.approx(
        float(smoothed.sum()), rel=1e-6)


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
