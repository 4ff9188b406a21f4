"""Test-time augmentation: average the model's outputs over a few views of each test image. In a run it is a
callback (`+callbacks=tta callbacks.tta.mode=flip`) that changes how the final test of the best model predicts;
`python -m cifarbench.evaluate ... tta=flip` uses the same views.

Logits are averaged, not probabilities, as airbench does: the result is still a logit tensor, so the caller's
cross-entropy, argmax and top-5 code works on it unchanged, and ``mode="none"`` returns exactly ``model(images)``
(as float32, like every mode, so bf16 autocast outputs are summed in float32).

Modes (``x`` is the batch, ``flip`` mirrors left-right, ``shift(x, d)`` moves the content ``d`` pixels down and
``d`` pixels right, filling the uncovered border by reflection):

* ``"none"``: ``model(x)``;
* ``"flip"``: ``(model(x) + model(flip(x))) / 2``;
* ``"flip_translate"``: six views, weighted as in airbench94 (Jordan 2024, "multi-crop evaluation"):
  ``x`` and ``flip(x)`` at 1/4 each, and ``shift(x, -d)``, ``flip(shift(x, -d))``, ``shift(x, +d)``,
  ``flip(shift(x, +d))`` at 1/8 each, with ``d = translate_px = 1``. airbench translates one pixel up-left and one
  pixel down-right, so the two translated views lie 2 px apart ("two 2-px translations" in some descriptions).

Each view is one forward pass over the whole batch (not one concatenated batch): memory stays that of plain
evaluation, and every view sees the same batch size, so a view identical to ``x`` gives bitwise the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarbench.engine.hooks import Callback, TrainerView
from cifarbench.errors import ConfigError

TTA_MODES = ("none", "flip", "flip_translate")


def translate(images: Tensor, shift: int) -> Tensor:
    """Move the content of (N, C, H, W) images ``shift`` px down and right (negative: up and left), reflect-filled."""
    if shift == 0:
        return images
    d = abs(shift)
    height, width = images.shape[-2:]
    padded = F.pad(images, (d, d, d, d), mode="reflect")
    # Output pixel (i, j) = padded (i + d - shift, j + d - shift) = input (i - shift, j - shift).
    start = d - shift
    return padded[..., start : start + height, start : start + width]


def tta_views(images: Tensor, mode: str, translate_px: int = 1) -> list[tuple[float, Tensor]]:
    """The ``(weight, view)`` pairs of ``mode``; weights sum to 1."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return [(1.0, images)]
    if mode == "flip":
        return [(0.5, images), (0.5, images.flip(-1))]
    views = [(0.25, images), (0.25, images.flip(-1))]
    for shift in (-translate_px, translate_px):
        moved = translate(images, shift)
        views += [(0.125, moved), (0.125, moved.flip(-1))]
    return views


@torch.no_grad()
def predict_with_tta(model: nn.Module, images: Tensor, mode: str = "none", translate_px: int = 1) -> Tensor:
    """Weighted average of ``model``'s logits over the views of ``mode`` (see the module docstring).

    The caller sets eval mode, autocast and the device; this only runs the views.
    """
    views = tta_views(images, mode, translate_px)
    if len(views) == 1:
        return model(images).float()
    total = None
    for weight, view in views:
        logits = model(view).float() * weight
        total = logits if total is None else total + logits
    return total


class SelectiveTTA:
    """A `predict(model, images)` that augments only the images the model is unsure of: the plain forward first,
    then `mode`'s other views for the images whose top softmax probability is below `below_confidence` (Hiverge's
    CIFAR-10 record spends its TTA this way). The plain logits count as the first view, so an augmented image gets
    exactly `mode`'s weighted average and a confident one its plain logits. Counts the forward passes it runs."""

    def __init__(self, mode: str, translate_px: int = 1, below_confidence: float = 1.1):
        self.mode, self.translate_px, self.below_confidence = mode, int(translate_px), float(below_confidence)
        self.images = self.forward_images = self.augmented = 0

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = model(images).float()
        unsure = logits.softmax(1).amax(1) < self.below_confidence
        count = int(unsure.sum())
        if count:
            (weight, _), *others = tta_views(images[unsure], self.mode, self.translate_px)
            total = logits[unsure] * weight
            for weight, view in others:
                total += model(view).float() * weight
            logits[unsure] = total
            self.forward_images += count * len(others)
        self.images += len(images)
        self.forward_images += len(images)
        self.augmented += count
        return logits

    def cost(self) -> dict:
        """Forward passes per test image (full TTA: the number of views) and the share of images augmented."""
        return {"forward_passes_per_image": self.forward_images / max(self.images, 1),
                "augmented_fraction": self.augmented / max(self.images, 1)}


CALLBACK_KEYS = ("callbacks.tta.mode", "callbacks.tta.translate_px", "callbacks.tta.below_confidence")


def selective_tta(mode: str, translate_px: int = 1, below_confidence: float | None = None,
                  keys: tuple[str, str, str] = CALLBACK_KEYS) -> SelectiveTTA | None:
    """The test's predictor for `mode` (None for "none"): every image augmented, or with `below_confidence` only the
    unsure ones. A bad value is one ConfigError naming its option (`keys`: the names of the three)."""
    if mode not in TTA_MODES:
        raise ConfigError(f"{keys[0]}={mode!r} is not supported; use one of {', '.join(TTA_MODES)}")
    if int(translate_px) < 1:
        raise ConfigError(f"{keys[1]}={translate_px!r} must be a number of pixels >= 1")
    if below_confidence is not None and not 0 < float(below_confidence) <= 1:
        raise ConfigError(f"{keys[2]}={below_confidence!r} must be a probability in (0, 1] "
                          "(or null: augment every image)")
    if mode == "none":
        return None
    # Full TTA is the selective one with a bar no prediction clears (probabilities never exceed 1).
    return SelectiveTTA(mode, int(translate_px), 1.1 if below_confidence is None else float(below_confidence))


class TestTimeAugmentation(Callback):
    """The final test of the best model averages the logits of `mode`'s views (per-epoch evaluation stays plain, as
    in airbench); with `below_confidence`, only for the images whose plain prediction is less sure than that
    (SelectiveTTA). metrics.json's `tta` says what it cost. Stateless: adding or removing it never blocks a resume."""

    def __init__(self, mode: str = "flip", translate_px: int = 1, below_confidence: float | None = None):
        self.predictor = selective_tta(mode, translate_px, below_confidence)
        self.mode, self.translate_px, self.below_confidence = mode, int(translate_px), below_confidence

    def setup(self, trainer: TrainerView) -> None:
        evaluation = trainer.hooks["evaluation"]
        evaluation.test_predict = self.predictor
        evaluation.test_views = self.mode + (f" below confidence {self.below_confidence:g}"
                                             if self.below_confidence is not None else "")

    def metrics(self) -> dict:
        cost = self.predictor.cost() if self.predictor is not None else {"forward_passes_per_image": 1.0,
                                                                         "augmented_fraction": 0.0}
        return {"tta": {"mode": self.mode, "below_confidence": self.below_confidence, **cost}}
