"""Checks that need a CUDA GPU: `pytest -m cuda` on a GPU machine runs them all; without CUDA they are skipped.

They cover what the CPU suite can only stand in for: a kill and resume on the GPU (RNG states, the device loader's
CUDA generator, the optimizer state moved back to the GPU), fp16 with a real GradScaler, bf16, and the device
loader feeding a CUDA model without making the host wait per batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarbench.checkpoint import load_checkpoint
from cifarbench.data import augment as A
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.splits import ImageTensors
from cifarbench.engine.trainer import Trainer
from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.config import compose_config
from tests.helpers.host_traffic import HostTraffic
from tests.helpers.paths import REPO
from tests.helpers.runs import train_in_process

pytestmark = pytest.mark.cuda


# resnet20 on synthetic data: 12 steps of 32 per epoch, on the GPU, deterministic kernels.
GPU_RUN = [
    "model=resnet20", "dataset=synthetic", "dataset.source.train_size=384", "dataset.source.test_size=128",
    "trainer.batch_size=32", "trainer.eval_batch_size=128", "trainer.device=cuda", "trainer.deterministic=true",
    "trainer.progress_bar=false", "augment=[standard,cutout]", "+callbacks=ema", "trainer.epochs=3",
    "trainer.resume=auto",
]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def epochs_logged(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "metrics.json").read_text()).get("history") or [])
    except (OSError, ValueError):
        return 0


def test_kill_and_resume_on_cuda_ends_like_an_uninterrupted_run(tmp_path):
    reference = train_in_process(GPU_RUN, tmp_path / "reference")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    command = [sys.executable, "-m", "cifarbench.train", *GPU_RUN, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epochs_logged(run_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] >= 1

    resumed = subprocess.run(command, cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                             timeout=HANG_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["device"].startswith("cuda")
    for key in ("test/loss", "test/acc", "test_ema/acc", "train/loss"):
        assert metrics["final"][key] == reference["final"][key], key
    assert metrics["test"] == reference["test"]
    straight = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    again = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(straight[k], again[k]) for k in straight)


@pytest.mark.parametrize("precision", ["16", "bf16"])
def test_mixed_precision_trains_on_cuda(precision, tmp_path):
    """gpu_check's run (48 steps of 64; 100% on the CPU for seeds 0-2) and its bar. The earlier 24 steps of 32
    reached 18-27% on the CPU, so a bar of 50% failed a correct GPU path."""
    from test_gpu_check import load_script

    gpu_check = load_script("gpu_check")
    overrides = gpu_check.RUN + [f"trainer.precision={precision}", "trainer.device=cuda", "trainer.grad_clip_norm=5.0"]
    trainer = Trainer(compose_config(overrides), tmp_path / "run", {})
    assert trainer.scaler.is_enabled() == (precision == "16")
    result = trainer.fit()
    assert result["status"] == "completed" and result["test"]["acc"] > gpu_check.ACCURACY_BAR, result["test"]
    scaler = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["scaler"]
    assert (scaler.get("scale", 0) > 0) == (precision == "16")


def test_the_device_loader_feeds_a_cuda_model_without_host_waits():
    device = torch.device("cuda")
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageTensors(images, torch.randint(0, 10, (512,)))
    ops = [A.RandomCrop(padding=4), A.HorizontalFlip(), A.Cutout(length=8)]
    batches = iter(DeviceLoader(data, 64, mean=(0.5,) * 3, std=(0.25,) * 3, ops=ops, shuffle=True, drop_last=True,
                                device=device, seed=0))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(batches)  # the first batch fills the per-device caches of constants
    assert x.device.type == "cuda" and y.device.type == "cuda"
    for _ in range(3):
        with HostTraffic() as traffic:
            x, y = next(batches)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert traffic.of("read") == [] and traffic.of("from_python") == [], traffic.events


@pytest.mark.cuda
def test_precision_auto_on_this_gpu_picks_bf16_only_where_it_is_native():
    from cifarbench.device import resolve_precision

    precision, why = resolve_precision(torch.device("cuda"), "auto")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert precision == ("bf16" if native else "16"), why
