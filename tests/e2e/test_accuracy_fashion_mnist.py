"""Real images, real accuracy: ResNet-20 on Debian's Fashion-MNIST reaches 90% test accuracy in 1.25 epochs.

Batch 64, lr 0.1, no augmentation, one thread, channels_last (1.2-1.3x the img/s of the default layout for this
network on a 2-core AVX2 host; the test's time is the suite's longest). Measured: 90.61% with channels_last (seed
0, 341 s beside other work); 90.67% and 91.22% (seeds 0 and 1) without it. 1 epoch at batch 64 gave 90.16%, at
batch 128 89.81%; 2 epochs at batch 128 gave 91.6-92.0% but took 522 s in the suite. tests/conftest.py sorts it
first, so this, the suite's longest test, starts first and the other worker runs the rest beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import HANG_TIMEOUT

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir() and not os.environ.get("CI"),
    reason="apt-get install dataset-fashion-mnist (CI installs it, so this never skips there)",
)
def test_resnet20_reaches_90_percent_on_fashion_mnist(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "cifarbench.train", "model=resnet20", "dataset=fashion_mnist",
            f"dataset.source.root={FASHION_MNIST_DIR}", "dataset.image_size=28", "augment=none",
            "trainer.epochs=1.25", "trainer.batch_size=64", "optimizer.lr=0.1", "scheduler.warmup_epochs=0.1",
            "trainer.device=cpu", "trainer.num_threads=1", "trainer.channels_last=true", f"hydra.run.dir={run_dir}",
            "trainer.eval_every_n_epochs=2",  # the test set once, after the last epoch: 10k fewer images to score
        ],
        capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2  # the second one stops a quarter of the way
    assert metrics["test"]["acc"] >= 0.90, metrics["test"]
    assert len(metrics["per_class_acc"]) == 10
