"""Data-parallel training with torchrun on the CPU (gloo): the same maths as one process, one run directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from cifarbench.checkpoint import load_checkpoint
from cifarbench.trainer import Trainer

TESTS = Path(__file__).resolve().parent
TORCHRUN = shutil.which("torchrun")


@pytest.fixture
def search_path(tmp_path) -> Path:
    """A config dir on Hydra's search path with a BatchNorm-free model, so global and per-rank batches agree."""
    conf = tmp_path / "extra_conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_conv.yaml").write_text(
        "_target_: toy_models.TinyConvNet\nnum_classes: ${dataset.num_classes}\nin_channels: ${dataset.in_channels}\n"
    )
    return conf.parent


def common(search_path: Path, batch_size: int) -> list[str]:
    return [
        f"hydra.searchpath=[file://{search_path}]", "model=tiny_conv", "dataset=synthetic",
        "dataset.source.train_size=256", "dataset.source.test_size=64", "augment=none", "trainer.device=cpu",
        f"trainer.batch_size={batch_size}", "trainer.deterministic=true", "trainer.num_threads=1",
        "trainer.progress_bar=false",
    ]


def launch(args: list[str], cwd: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CIFARBENCH_ROOT": str(cwd)}
    env.pop("CIFARBENCH_RUN_STAMP", None)
    if nproc == 1:
        command = [sys.executable, "-m", "cifarbench.train"]
    else:
        command = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "cifarbench.train"]
    proc = subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 5e-5) -> None:
    """Float sums in another order differ in the last bits; a few SGD steps with momentum grow that to ~1e-5."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=1e-5), key


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is installed with torch")
def test_two_processes_match_one_process_with_the_global_batch(tmp_path, search_path):
    launch(common(search_path, 32) + ["trainer.epochs=2", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path, nproc=2)
    launch(common(search_path, 64) + ["trainer.epochs=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path, nproc=1)
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "single"))
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ddp["world_size"] == 2 and len(ddp["ranks"]) == 2 and ddp["global_step"] == 8


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is installed with torch")
def test_a_two_process_run_writes_one_run_directory(tmp_path, search_path):
    launch(common(search_path, 32) + ["trainer.epochs=1"], tmp_path, nproc=2)
    runs = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((tmp_path / "outputs").rglob("metrics.json"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is installed with torch")
def test_two_process_run_stopped_by_sigterm_resumes_to_the_same_weights(tmp_path, search_path):
    args = common(search_path, 32) + ["trainer.epochs=4", "dataset.source.train_size=1024",
                                      "trainer.log_every_n_steps=1"]
    run_dir = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    env.pop("CIFARBENCH_RUN_STAMP", None)
    proc = subprocess.Popen(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "cifarbench.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as SLURM or a shell would: to torchrun, which forwards it to the workers
    proc.wait(timeout=300)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    stopped = load_checkpoint(last)
    assert stopped["epoch"] < 4

    launch(args + ["trainer.resume=auto", f"hydra.run.dir={run_dir}"], tmp_path, nproc=2)
    launch(args + [f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path, nproc=2)
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 4 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert_same_weights(resumed["model"], weights(tmp_path / "straight"), atol=0)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, search_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    results = {}
    for name, batch, steps in (("accumulated", 32, 2), ("plain", 64, 1)):
        cfg = compose_config(common(search_path, batch) + ["trainer.epochs=1", f"trainer.accumulate_steps={steps}"])
        trainer = Trainer(cfg, tmp_path / name, {})
        assert trainer.global_batch == 64
        trainer.fit()
        results[name] = trainer
    assert results["accumulated"].global_step == results["plain"].global_step == 4
    assert_same_weights(results["accumulated"].model.state_dict(), results["plain"].model.state_dict())
