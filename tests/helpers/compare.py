"""Comparing runs: weights, nested state and metrics equal bit for bit, time-derived values left out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from cifarbench import checkpoint
from tests.helpers.events import scalars


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_weights(a: dict, b: dict, atol: float = 5e-5) -> None:
    """Float sums in another order differ in the last bits; a few SGD steps with momentum grow that to ~1e-5."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=1e-5), key


# Wall-clock-derived values differ between any two runs; everything else must match bit for bit.
# train_samples counts the images behind img_per_s: like train_time, it leaves out the part of an epoch before a stop.
TIME_KEYS = {
    "time/epoch_s", "throughput/img_per_s", "elapsed", "train_time", "train_samples", "wall_time_s", "img_per_s",
    "sessions", "session_wall_time_s",
}


def is_time(key) -> bool:
    """A time-derived metric, under any prefix (e.g. hparams/wall_time_s)."""
    key = str(key)
    return key in TIME_KEYS or key.rsplit("/", 1)[-1] in TIME_KEYS or key.split("/", 1)[0] in ("time", "throughput")


def without_time(value):
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if not is_time(k)}
    if isinstance(value, (list, tuple)):
        return [without_time(v) for v in value]
    return value


def assert_identical(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit (time-derived keys excluded)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys, other = {k for k in a if not is_time(k)}, {k for k in b if not is_time(k)}
        assert keys == other, f"{where}: keys {sorted(keys ^ other)} differ"
        for key in keys:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(reference: Path, resumed: Path, epochs: int) -> None:
    """What a user compares: final and best weights (with optimizer, EMA, SWA, RNG state), metrics, curves."""
    ref_last = checkpoint.load_checkpoint(reference / "checkpoints" / "last.pt")
    new_last = checkpoint.load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert new_last["epoch"] == epochs and new_last["state"]["step_in_epoch"] == 0
    for name, tensor in ref_last["model"].items():
        assert torch.equal(tensor, new_last["model"][name]), f"final weight {name} differs from the uninterrupted run"
    # The config string holds this run's paths; everything else in last.pt must be the same.
    assert_identical({k: v for k, v in ref_last.items() if k != "config"},
                     {k: v for k, v in new_last.items() if k != "config"}, "last.pt")
    ref_best = checkpoint.load_checkpoint(reference / "checkpoints" / "best.pt")
    new_best = checkpoint.load_checkpoint(resumed / "checkpoints" / "best.pt")
    assert_identical(ref_best["model"], new_best["model"], "best.pt model")
    assert_identical(without_time(ref_best["metrics"]), without_time(new_best["metrics"]), "best.pt metrics")

    ref_metrics = json.loads((reference / "metrics.json").read_text())
    new_metrics = json.loads((resumed / "metrics.json").read_text())
    assert new_metrics["status"] == "completed"
    for key in ("history", "best", "final", "test", "swa", "epochs", "skipped_steps"):
        assert without_time(new_metrics.get(key)) == without_time(ref_metrics.get(key)), f"metrics.json {key}"

    ref_curves, new_curves = scalars(reference), scalars(resumed)
    assert set(new_curves) == set(ref_curves)
    for tag, points in new_curves.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"
        assert steps == [step for step, _ in ref_curves[tag]], f"TensorBoard tag {tag} misses an epoch: {steps}"
        if not is_time(tag):
            assert points == ref_curves[tag], f"TensorBoard curve {tag} differs from the uninterrupted run"
