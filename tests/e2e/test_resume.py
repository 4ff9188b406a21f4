"""Resume from the command line: a run killed or stopped in a subprocess and rerun ends like one never
interrupted, and a refused resume leaves the run's record as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifarbench import checkpoint
from tests.helpers.cli import HANG_TIMEOUT, cli, finish, start_training, wait_until
from tests.helpers.compare import assert_same_run
from tests.helpers.config import airbench_recipe
from tests.helpers.data import write_cifar10
from tests.helpers.paths import REPO
from tests.helpers.runs import SMALL, reference_run

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a scheduler may requeue the job


# The fast path with every piece of state that a resume has to carry: the device-side augmentation generator,
# EMA, and SWA (averaging from epoch 2, with its own LR schedule).
DEVICE_RUN = SMALL + [
    "dataset.loader=device",
    "trainer.epochs=3",
    "trainer.resume=auto",
    "+callbacks=[ema,swa]",
    "callbacks.ema.decay=0.9",
    "callbacks.swa.start_epoch=2",
    "callbacks.swa.anneal_epochs=1",
    "callbacks.swa.lr=0.02",
]


def epochs_logged(run_dir: Path) -> int:
    """Epochs in metrics.json (written atomically after each epoch's checkpoint), 0 before the first."""
    try:
        return len(json.loads((run_dir / "metrics.json").read_text()).get("history") or [])
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def device_reference(tmp_path_factory) -> Path:
    return reference_run(DEVICE_RUN, tmp_path_factory.mktemp("device_ref") / "run")


def worker_loader_run(root: Path) -> list[str]:
    # The per-sample path as shipped (the default of dataset=imagefolder, an option for CIFAR): a DataLoader with
    # the dataset's default 2 persistent worker processes, which draw the augmentations.
    return SMALL[:1] + SMALL[4:] + [f"paths.data_dir={root}", "dataset.source.download=false", "dataset.loader=torch",
                                    "trainer.epochs=3", "trainer.resume=auto"]


# ============================================================================================ exact resume
def signal_in_epoch_2(overrides: list[str], tmp_path: Path, sig: int = signal.SIGKILL) -> tuple[Path, Path, int]:
    """Start a run in tmp_path/run and send it `sig` inside epoch 2; (run directory, its log, exit status)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = tmp_path / "signalled.log"
    proc = start_training(overrides, run_dir, log)
    # metrics.json lists epoch 1 only after epoch 1's last.pt is in place: the run is now inside epoch 2.
    wait_until(lambda: epochs_logged(run_dir) >= 1, proc, "epoch 1 finished", log)
    proc.send_signal(sig)
    return run_dir, log, finish(proc)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["device", "torch_workers"])
def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(loader, tmp_path, request):
    """SIGKILL in epoch 2, rerun the same command: same weights, metrics and curves as a run never killed."""
    if loader == "device":
        overrides, reference = DEVICE_RUN, request.getfixturevalue("device_reference")
    else:
        root = request.getfixturevalue("tiny_cifar")
        overrides = worker_loader_run(root)
        reference = reference_run(overrides, tmp_path / "reference")
    run_dir, log, status = signal_in_epoch_2(overrides, tmp_path)
    assert status == -signal.SIGKILL
    assert "starting a fresh run" in log.read_text()  # resume=auto with nothing to resume says so
    killed_at = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= killed_at < 3

    resumed = cli("cifarbench.train", overrides + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {killed_at}" in resumed.stdout + resumed.stderr  # "resumed from ... after epoch N"
    assert_same_run(reference, run_dir, epochs=3)


@pytest.mark.slow
def test_sigterm_stops_after_a_step_saves_and_resumes_exactly(tmp_path, device_reference):
    run_dir, log, status = signal_in_epoch_2(DEVICE_RUN, tmp_path, signal.SIGTERM)
    output = log.read_text()
    assert status == EXIT_INTERRUPTED, f"exit status {status}, expected {EXIT_INTERRUPTED} (EX_TEMPFAIL):\n{output}"
    assert "Traceback" not in output

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert "SIGTERM" in metrics["error"] and "trainer.resume=auto" in metrics["error"]
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # Stopped inside epoch 2, after the step that was running: a mid-epoch checkpoint.
    assert 1 <= saved["epoch"] < 3 and saved["state"]["step_in_epoch"] >= 1
    assert isinstance(saved["config"], str) and OmegaConf.create(saved["config"]).trainer.epochs == 3

    resumed = cli("cifarbench.train", DEVICE_RUN + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(device_reference, run_dir, epochs=3)


# Narrower than the recipes (what last.pt holds does not depend on the widths), so the runs fit the suite.
AIRBENCH_KILLED = {
    # airbench94_muon: two optimizers and their schedules, the Muon momentum buffers among them, all in last.pt;
    # with airbench94's lookahead added, whose running average must resume too (one run covers both recipes' state).
    "airbench94_muon": ["+callbacks=lookahead", "model.widths=[32,96,96]"],
    # airbench96_faster: the residual network plus data selection, whose proxy (weights, optimizer, schedule, step
    # counter) must resume too. It keeps half of each batch of 128 (the record: 512 of 1,024) and, as in the record,
    # trains the proxy every 4th batch: at batch 0, before the epoch-1 checkpoint, and at 4 and 8, after it.
    "airbench96_faster": ["model.widths=[32,96,128]", "callbacks.data_selection.keep=0.5",
                          "callbacks.data_selection.proxy.widths=[16,32,32]"],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(AIRBENCH_KILLED))
def test_airbench_sigkill_mid_run_and_rerun_gives_the_same_final_weights(tmp_path, experiment):
    root = write_cifar10(tmp_path / "data", per_batch=80, test_size=100)
    overrides = airbench_recipe(root, experiment) + ["trainer.resume=auto"] + AIRBENCH_KILLED[experiment]
    reference = tmp_path / "reference"
    straight = cli("cifarbench.train", overrides + [f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir, _, status = signal_in_epoch_2(overrides, tmp_path)
    assert status == -signal.SIGKILL
    resumed = cli("cifarbench.train", overrides + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_run(reference, run_dir, epochs=3)
    if experiment == "airbench96_faster":
        # 8 batches of 128 (400 images, 2.5 epochs): the main network trained on 64 of each, the proxy scored all
        # 8 and trained on the kept 64 of batches 0 and 4 (metrics.json counts the resumed run's whole history).
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["data_selection"] == {"kept_per_batch": "50%", "proxy_forward_images": 8 * 128,
                                             "proxy_backward_images": 2 * 64}


def test_a_refused_resume_from_the_cli_leaves_config_overrides_and_metrics_as_they_were(tmp_path):
    run = ["dataset=synthetic", "model=simple_cnn", "dataset.source.train_size=64", "dataset.source.test_size=32",
           "trainer.batch_size=32", "trainer.device=cpu", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, "-m", "cifarbench.train", *run], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {name: (tmp_path / "run" / name).read_bytes()
            for name in ("config.yaml", ".hydra/overrides.yaml", ".hydra/config.yaml", "metrics.json")}
    again = subprocess.run([sys.executable, "-m", "cifarbench.train", *run, "optimizer.lr=0.3"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    errors = [line for line in (again.stdout + again.stderr).splitlines() if "optimizer.lr: 0.1 -> 0.3" in line]
    assert len(errors) == 1 and errors[0].startswith("cifarbench: error: "), again.stdout + again.stderr
    assert {name: (tmp_path / "run" / name).read_bytes() for name in kept} == kept
