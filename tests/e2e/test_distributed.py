"""Data-parallel training with torchrun on the CPU (gloo): the same maths as one process, one run directory."""

from __future__ import annotations

import csv
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

from cifarbench.checkpoint import load_checkpoint
from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.compare import assert_same_weights
from tests.helpers.config import toy_overrides
from tests.helpers.paths import REPO

# torchrun from the interpreter running the tests, so that a venv that isn't activated (no torchrun on PATH) still
# runs them.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def launch(args: list[str], cwd: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CIFARBENCH_ROOT": str(cwd)}
    env.pop("CIFARBENCH_RUN_STAMP", None)
    if nproc == 1:
        command = [sys.executable, "-m", "cifarbench.train"]
    else:
        command = [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "cifarbench.train"]
    proc = subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_global_batch(tmp_path, toy_conf):
    launch(toy_overrides(toy_conf, 64) + ["trainer.epochs=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path,
           nproc=1)
    launch(toy_overrides(toy_conf, 32) + ["trainer.epochs=2", f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path, nproc=2)
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "single"))
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ddp["world_size"] == 2 and len(ddp["ranks"]) == 2 and ddp["state"]["global_step"] == 8

    # accumulate_steps=2 under DDP: no_sync on the first micro-batch of each group, one all-reduce on the last. This
    # run also logs every step to three loggers, into a run directory of its own choosing under outputs/.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    launch(toy_overrides(toy_conf, 16) + ["trainer.epochs=2", "trainer.accumulate_steps=2",
                                          "logger=[tensorboard,csv,mlflow]", f"logger.mlflow.tracking_uri={uri}",
                                          "trainer.log_every_n_steps=1"], tmp_path, nproc=2)
    # Only rank 0 logs: one run directory, one event file, one metrics.csv and one MLflow run, each step once.
    runs = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert_same_weights(weights(run_dir), weights(tmp_path / "single"))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]["global_step"] == 8
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    with (run_dir / "metrics.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(1, 10))  # 8 optimizer steps of the global batch 64, then the end
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("cifarbench").experiment_id])
    history = client.get_metric_history(mlflow_run.info.run_id, "train/loss_step")
    assert sorted(m.step for m in history) == list(range(1, 9))  # 8 optimizer steps of the global batch 64
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((tmp_path / "outputs").rglob("metrics.json"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_two_process_run_stopped_by_sigterm_resumes_to_the_same_weights(tmp_path, toy_conf):
    """SIGTERM to torchrun mid-epoch, with log steps far apart: the ranks still agree to stop within seconds (torchrun
    SIGKILLs its workers 30 s after forwarding SIGTERM), save a mid-epoch last.pt, and the rerun resumes from it."""
    steps_per_epoch = 8192 // (2 * 32)
    args = toy_overrides(toy_conf, 32) + ["trainer.epochs=2", "dataset.source.train_size=8192",
                                          "trainer.log_every_n_steps=100000", "trainer.stop_check_s=0.05"]
    run_dir = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("CIFARBENCH_RUN_STAMP", None)
    proc = subprocess.Popen(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "cifarbench.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as SLURM or a shell would: to torchrun, which forwards it to the workers
    _, stderr = proc.communicate(timeout=HANG_TIMEOUT)
    assert "forcefully exiting" not in stderr, stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    stopped = load_checkpoint(last)
    # Stopped inside epoch 2, long before its last step (the only log step of the epoch).
    assert stopped["epoch"] == 1 and 1 <= stopped["state"]["step_in_epoch"] < steps_per_epoch, stopped["state"]

    launch(args + ["trainer.resume=auto", f"hydra.run.dir={run_dir}"], tmp_path, nproc=2)
    launch(args + [f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path, nproc=2)
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["state"]["history"]] == [1, 2]
    assert_same_weights(resumed["model"], weights(tmp_path / "straight"), atol=0)


# The installed script sits beside the interpreter in a venv, activated or not.
_BESIDE = Path(sys.executable).parent / "cifarbench-train"


CONSOLE_SCRIPT = str(_BESIDE) if _BESIDE.is_file() else shutil.which("cifarbench-train")


@pytest.mark.slow
@pytest.mark.skipif(CONSOLE_SCRIPT is None, reason=f"no cifarbench-train beside {sys.executable} or on PATH: the "
                    "package is not installed (pip install -e .), so its console script can't be run")
def test_console_script_under_torchrun_shares_one_run_directory_when_a_rank_starts_late(tmp_path, toy_conf):
    """`cifarbench-train` must do what `python -m cifarbench.train` does under torchrun: rank 0's run stamp is
    shared, so a rank that starts more than a second later still writes into the same run directory."""
    late_rank = 'if [ "$RANK" = 1 ]; then sleep 1.5; fi; exec "$0" "$@"'
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CIFARBENCH_ROOT": str(tmp_path)}
    env.pop("CIFARBENCH_RUN_STAMP", None)
    proc = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "--no-python", "sh", "-c", late_rank, CONSOLE_SCRIPT,
         *toy_overrides(toy_conf, 32), "trainer.epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = sorted(p.parent for p in (tmp_path / "outputs").rglob(".hydra"))
    assert len(run_dirs) == 1, run_dirs
    assert json.loads((run_dirs[0] / "metrics.json").read_text())["status"] == "completed"


def airbench_under_torchrun(tmp_path: Path, experiment: str, extra: list[str]) -> Path:
    """A recipe on 2 gloo processes, small enough for the CPU, for 4.5 epochs: past epoch 3, where its whitening bias
    stops training. Returns the run directory, which holds each rank's final weights
    (tests.helpers.toy_callbacks.RankWeights)."""
    run_dir = tmp_path / experiment
    launch([f"experiment={experiment}", "dataset=synthetic", "dataset.source.train_size=512",
            "dataset.source.test_size=128", "model.widths=[16,32,32]", "trainer.batch_size=64",
            "trainer.eval_batch_size=128", "trainer.epochs=4.5", "trainer.device=cpu", "trainer.precision=32",
            "trainer.num_threads=1", "trainer.progress_bar=false",
            "+callbacks.rank_weights._target_=tests.helpers.toy_callbacks.RankWeights",
            f"hydra.run.dir={run_dir}", *extra], tmp_path, nproc=2)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["airbench94", "airbench94_muon"])
def test_airbench_recipes_train_past_their_freezing_epoch_under_torchrun(tmp_path, experiment):
    """The whitening bias stops training after epoch 3. DDP built before that expects its gradient every step, so
    the run must wrap the model anew (before the fix: "Expected to have finished reduction in the prior iteration"
    in epoch 4, and that bucket unsynchronised before it)."""
    run_dir = airbench_under_torchrun(tmp_path, experiment, [])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 5
    rank0, rank1 = (torch.load(run_dir / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0, rank1, atol=0)


@pytest.mark.slow
def test_only_rank_0_sees_last_pt_and_both_ranks_resume_from_it(tmp_path, toy_conf):
    """Node-local run directories: each rank's hydra.run.dir is its own (node0, node1), and only rank 0's holds
    last.pt. Rank 0 decides and tells rank 1 which file to read; before, rank 1 found nothing, started fresh, and
    the ranks trained out of step until they hung."""
    base = toy_overrides(toy_conf, 32) + ["+callbacks.rank_weights._target_=tests.helpers.toy_callbacks.RankWeights",
                                          "hydra.run.dir=" + str(tmp_path) + "/node${oc.env:RANK}"]
    launch(base + ["trainer.epochs=1"], tmp_path, nproc=2)
    assert (tmp_path / "node0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "node1" / "checkpoints").exists()
    launch(base + ["trainer.epochs=2"], tmp_path, nproc=2)  # an extended resume: one more epoch
    resumed = load_checkpoint(tmp_path / "node0" / "checkpoints" / "last.pt")
    assert resumed["state"]["global_step"] == 8 and [h["epoch"] for h in resumed["state"]["history"]] == [1, 2]
    rank0 = torch.load(tmp_path / "node0" / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "node1" / "weights_rank1.pt", weights_only=True)
    assert_same_weights(rank0, rank1, atol=0)
