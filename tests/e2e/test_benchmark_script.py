"""scripts/benchmark.py --quick runs end to end and saves every section; it asserts no timings, only structure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.paths import REPO

SCRIPT = REPO / "scripts" / "benchmark.py"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "out.json"
    # --threads 1: the quick run only checks that everything works, and one thread keeps it light (and far
    # quicker) on a CPU shared with other jobs.
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(out), "--threads", "1"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())

    header = results["header"]
    assert header["device"] == "cpu"
    assert header["torch_num_threads"] == 1
    assert {"data", "overhead", "options"} <= results.keys()
    # Every CPU figure comes with the host's capability (bf16 figures mean little without it).
    capability = torch.backends.cpu.get_cpu_capability()
    assert header["cpu_capability"] == capability
    assert all(results[section]["cpu_capability"] == capability for section in ("data", "overhead", "options"))
    assert f"torch CPU capability {capability}" in proc.stdout
    assert proc.stdout.count(f"host CPU capability {capability}]") == len(results) - 1

    configs = {row["config"]: row for row in results["data"]["configs"]}
    assert set(configs) == {"a", "b"}
    for row in configs.values():
        for key in ("per_sample_img_s", "device_img_s", "ratio", "goal_ratio"):
            assert _positive(row[key]), (key, row)
        assert isinstance(row["meets_goal"], bool)
    assert (configs["a"]["goal_ratio"], configs["b"]["goal_ratio"]) == (10.0, 5.0)
    loader = results["data"]["loader_by_batch"]
    assert sorted(loader["img_s"]) == ["128", "64"] and all(_positive(v) for v in loader["img_s"].values())
    assert loader["best_img_s"] == max(loader["img_s"].values()) and loader["goal_img_s"] == 1_000_000

    overhead = results["overhead"]
    for key in ("trainer_img_s", "bare_img_s", "ratio", "trainer_fit_img_s", "bare_all_epochs_img_s", "fit_ratio"):
        assert _positive(overhead[key]), (key, overhead[key])
    assert overhead["goal_ratio"] == 0.95
    # Both loops trained on the same number of images per epoch.
    assert overhead["images_per_epoch"] == overhead["bare_images_per_epoch"] > 0

    rows = results["options"]["results"]
    models = {row["model"] for row in rows}
    assert len(models) == 2  # a small and a large model
    for row in rows:
        assert row["error"] is None, row
        assert _positive(row["img_s"]) and _positive(row["ratio"]), row
    for model in models:
        variants = {row["variant"]: row for row in rows if row["model"] == model}
        assert {"baseline", "channels_last", "bf16"} <= variants.keys()
        assert variants["baseline"]["ratio"] == pytest.approx(1.0)


def test_unknown_section_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "data,nope"], cwd=tmp_path, capture_output=True, text=True,
        timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stderr


@pytest.mark.slow
def test_quick_airbench_and_image_folder_sections_measure_both_sides(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(160 if split == "train" else 8):
                Image.new("RGB", (32, 32), (i, 50 if label == "a" else 200, 0)).save(
                    tmp_path / "images" / split / label / f"{i}.png")
    out = tmp_path / "out.json"
    # One recipe: both go through the same section code, and airbench94_muon's two optimizers are the harder case
    # for the bare side (the suite's time budget pays for one, at narrow widths: Muon's bf16 orthogonalisation is
    # emulated on an AVX2 CPU).
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(out), "--threads", "1",
               "--only", "airbench,imagefolder", "--ab-recipes", "airbench94_muon", "--ab-train-size", "128",
               "--ab-test-size", "64", "--ab-override", "model.widths=[16,32,32]",
               "--image-folder", str(tmp_path / "images")]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    recipes = results["airbench"]["recipes"]
    assert sorted(recipes) == ["airbench94_muon"]
    for airbench in recipes.values():
        for key in ("trainer_img_s", "bare_img_s", "train_ratio", "trainer_run_s", "bare_run_s", "run_ratio",
                    "trainer_fixed_s", "bare_fixed_s"):
            assert _positive(airbench[key]), (key, airbench)
        # The counted work of a training step: the trainer's model passes are the bare loop's, exactly, and what it
        # adds per step is bookkeeping (a few dozen small calls), not a second forward or a per-step image.
        assert airbench["counted_steps"] == [1, 1]  # --quick counts 1 batch an epoch
        assert airbench["flop_ratio"] == 1.0 and airbench["bare_step_gflop"] > 0.1, airbench
        assert 0 <= airbench["trainer_step_calls"] - airbench["bare_step_calls"] < 0.25 * airbench["bare_step_calls"]
    figures = results["imagefolder"]["img_per_s"]
    assert len(figures) == 2 and all(_positive(v) for v in figures.values())
    assert "cached device path / per-sample path" in proc.stdout
