"""Test-time augmentation: the views and their weights, and the final test and evaluate with TTA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarbench.callbacks.tta import predict_with_tta, translate
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.errors import ConfigError
from tests.helpers.config import tiny_cifar_overrides
from tests.helpers.runs import train_in_process
from tests.helpers.tensors import _gen


def test_tta_applies_to_the_final_test_and_to_evaluate(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["+callbacks=tta", "callbacks.tta.mode=flip"], run_dir)
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu", tta="flip")
    assert evaluated["acc"] == result["test"]["acc"]
    assert evaluated["loss"] == pytest.approx(result["test"]["loss"], rel=1e-6)
    plain = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    assert plain["loss"] != pytest.approx(evaluated["loss"], rel=1e-9)


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


def test_selective_tta_augments_only_the_unsure_images_and_counts_what_it_ran():
    """Each image gets either its plain logits (a confident prediction) or exactly the full flip_translate average
    (an unsure one); the cost is 1 forward pass per image plus 5 per augmented one."""
    from cifarbench.callbacks.tta import SelectiveTTA

    torch.manual_seed(0)
    model = _asymmetric_net().eval()
    images = torch.randn(32, 3, 6, 6, generator=_gen(1))
    with torch.no_grad():
        plain = model(images)
        full = predict_with_tta(model, images, "flip_translate")
    confidence = plain.softmax(1).amax(1)
    bar = confidence.median().item()
    selective = SelectiveTTA("flip_translate", 1, below_confidence=bar)
    with torch.no_grad():
        out = selective(model, images)
    unsure = confidence < bar
    assert 0 < int(unsure.sum()) < 32
    torch.testing.assert_close(out[~unsure], plain[~unsure], rtol=0, atol=0)
    torch.testing.assert_close(out[unsure], full[unsure], rtol=1e-5, atol=1e-6)
    assert selective.cost() == {"forward_passes_per_image": 1 + 5 * int(unsure.sum()) / 32,
                                "augmented_fraction": int(unsure.sum()) / 32}
    everything = SelectiveTTA("flip_translate", 1)  # no bar: every image augmented, as full TTA
    with torch.no_grad():
        torch.testing.assert_close(everything(model, images), full, rtol=1e-5, atol=1e-6)
    assert everything.cost()["forward_passes_per_image"] == 6


def test_the_tta_callback_reports_its_cost_in_metrics_json(tmp_path, cifar_root):
    result = train_in_process(tiny_cifar_overrides(cifar_root) + [
        "+callbacks=tta", "callbacks.tta.mode=flip", "callbacks.tta.below_confidence=0.99"], tmp_path / "run")
    tta = result["tta"]
    assert tta["mode"] == "flip" and tta["below_confidence"] == 0.99
    assert 0 < tta["augmented_fraction"] < 1
    assert tta["forward_passes_per_image"] == pytest.approx(1 + tta["augmented_fraction"])
    assert result["selected"]["test_views"] == "flip below confidence 0.99"
    with pytest.raises(ConfigError, match="below_confidence=1.5 must be a probability"):
        from cifarbench.callbacks.tta import TestTimeAugmentation

        TestTimeAugmentation("flip", below_confidence=1.5)
