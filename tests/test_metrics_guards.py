"""Fast guards on evaluation numbers, checkpoint versions, the loss and Muon's weight decay, each written for a
mutation that the rest of the suite let through."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.engine.metrics import evaluate


def test_per_class_accuracy_is_the_recall_of_each_true_class_and_top5_counts_the_fifth_guess():
    # nn.Identity: the "images" are the logits. Classes 0..9 score 9..0, so the k-th guess is class k - 1.
    ranked = torch.arange(9.0, -1.0, -1.0)
    top5_logits = ranked.repeat(3, 1)
    top5_labels = torch.tensor([0, 4, 5])  # first guess, fifth guess, sixth guess
    # 3-class rows: true classes [0, 0, 0, 1, 1, 2], predicted [0, 0, 1, 1, 2, 2].
    eye = torch.eye(3) * 5
    confusion_logits = eye[torch.tensor([0, 0, 1, 1, 2, 2])]
    confusion_labels = torch.tensor([0, 0, 0, 1, 1, 2])

    top5 = evaluate(nn.Identity(), [(top5_logits, top5_labels)], num_classes=10, device=torch.device("cpu"))
    assert top5["acc"] == pytest.approx(1 / 3) and top5["top5"] == pytest.approx(2 / 3)
    assert top5["loss"] == pytest.approx(float(F.cross_entropy(top5_logits, top5_labels)), rel=1e-6)

    result = evaluate(nn.Identity(), [(confusion_logits[:4], confusion_labels[:4]),
                                      (confusion_logits[4:], confusion_labels[4:])],
                      num_classes=3, device=torch.device("cpu"))
    assert result["count"] == 6 and result["acc"] == pytest.approx(4 / 6)
    assert result["per_class_acc"] == pytest.approx([2 / 3, 1 / 2, 1.0])  # recall, not precision [1, 1/2, 1/2]
    assert result["confusion"].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_a_checkpoint_from_a_newer_cifarbench_is_refused(tmp_path):
    from cifarbench.checkpoint import io as checkpoint
    from cifarbench.errors import CheckpointError

    checkpoint.save_checkpoint(tmp_path / "next.pt", {"kind": "best", "version": checkpoint.VERSION + 1})
    with pytest.raises(CheckpointError, match="newer cifarbench"):
        checkpoint.load_checkpoint(tmp_path / "next.pt")
    checkpoint.save_checkpoint(tmp_path / "now.pt", {"kind": "best"})
    assert checkpoint.load_checkpoint(tmp_path / "now.pt")["version"] == checkpoint.VERSION


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
