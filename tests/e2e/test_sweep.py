"""Sweep layer: the multirun callback and exit status, the launcher and Optuna configs, the TensorBoard helpers.

The callback tests run a tiny standalone Hydra app (not the trainer) in a temp dir. The tests marked slow run the
real trainer on synthetic data through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifarbench.cli import sweep
from cifarbench.loggers import tensorboard as tensorboard_logging
from cifarbench.reporting import table as report
from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.paths import REPO
from tests.helpers.sweep import event_dirs, has_module, needs_joblib, needs_optuna, read_events

ROOT = REPO


def run_python(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


# --------------------------------------------------------------------------------- callback on a tiny app
TINY_APP = '''
"""A stand-in for train.py: writes metrics.json per job; the job model=bad,dataset=d2 fails and is recorded."""
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    payload = {"model": cfg.model, "dataset": cfg.dataset, "overrides": list(hydra_cfg.overrides.task)}
    try:
        if cfg.model == "bad" and cfg.dataset == "d2":
            raise RuntimeError("the training loss became nan in epoch 1")
        accuracy = 0.5 + 0.1 * float(cfg.lr)
        payload.update(status="completed", test={"acc": accuracy}, params=1000, gflops=0.01, epochs=1)
        return accuracy
    except RuntimeError as error:
        payload.update(status="failed", error=f"{type(error).__name__}: {error}")
        return float("-inf")
    finally:
        Path(hydra_cfg.runtime.output_dir, "metrics.json").write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
'''


TINY_CONFIG = """
model: good
dataset: d1
lr: 1.0
hydra:
  sweep:
    subdir: ${hydra.job.num}_${hydra.job.override_dirname}
  job:
    chdir: false
  callbacks:
    sweep_report:
      _target_: cifarbench.cli.sweep.SweepReport
      sort_by: test_acc
      descending: true
      plots: false
      fail_on_failed_jobs: true
"""


@pytest.fixture
def tiny_app(tmp_path: Path) -> Path:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "app.py").write_text(TINY_APP)
    return tmp_path


def test_sweep_with_a_failed_job_writes_the_table_and_exits_non_zero(tiny_app):
    result = run_python(
        ["app.py", "-m", "model=good,bad", "dataset=d1,d2", "hydra.sweep.dir=sweep"], tiny_app
    )
    assert result.returncode == sweep.EXIT_JOBS_FAILED, result.stderr
    sweep_dir = tiny_app / "sweep"
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 4  # the failed job did not stop the others
    rows = table_rows((sweep_dir / "results.md").read_text())
    assert len(rows) == 4
    assert sorted(row[4] for row in rows) == ["completed", "completed", "completed", "failed"]
    reason = "RuntimeError: the training loss became nan in epoch 1"
    assert reason in (sweep_dir / "results.md").read_text()
    assert reason in (sweep_dir / "results.csv").read_text()
    assert reason in result.stdout and "1 job(s) did not complete" in result.stdout
    failed = sweep.sweep_failed_jobs(sweep_dir)
    assert [run["overrides"] for run in failed] == ["model=bad dataset=d2"]


def test_sweep_without_failures_exits_zero(tiny_app):
    result = run_python(["app.py", "-m", "model=good", "dataset=d1,d2", "hydra.sweep.dir=sweep"], tiny_app)
    assert result.returncode == 0, result.stderr
    assert len(table_rows((tiny_app / "sweep" / "results.md").read_text())) == 2
    assert sweep.sweep_failed_jobs(tiny_app / "sweep") == []


def test_exit_status_can_be_left_alone(tiny_app):
    result = run_python(
        ["app.py", "-m", "model=bad", "dataset=d2", "hydra.sweep.dir=sweep",
         "hydra.callbacks.sweep_report.fail_on_failed_jobs=false"],
        tiny_app,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "failed" in (tiny_app / "sweep" / "results.md").read_text()


@needs_optuna
def test_optuna_study_survives_a_failed_trial_that_returns_minus_inf(tiny_app):
    result = run_python(
        ["app.py", "-m", "hydra/sweeper=cifarbench_optuna", "hydra.sweeper.direction=maximize",
         "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0", "model=bad",
         "dataset=choice(d1,d2)", "lr=interval(0,1)", "hydra.sweep.dir=study"],
        tiny_app,
    )  # fmt: skip
    study_dir = tiny_app / "study"
    assert (study_dir / "optimization_results.yaml").is_file(), result.stderr  # the study ran to its end
    runs = report.collect_runs([study_dir])
    assert len(runs) == 3
    # model=bad fails on d2 only; the seeded sampler draws d2 at least once in three trials.
    failed = sweep.sweep_failed_jobs(study_dir)
    on_d2 = [run for run in runs if run["dataset"] == "d2"]
    assert failed and len(failed) == len(on_d2), (failed, runs)
    assert result.returncode == sweep.EXIT_JOBS_FAILED, result.stderr[-3000:]
    # The study (SQLite in the sweep directory by default) holds each failed job as a failed trial, not a value.
    import optuna

    study = optuna.load_study(study_name="cifarbench", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    states = [trial.state.name for trial in study.trials]
    assert len(states) == 3 and states.count("FAIL") == len(on_d2) and states.count("COMPLETE") == 3 - len(on_d2)


# ----------------------------------------------------------------------- end to end with the real trainer
def trainer_available() -> bool:
    return has_module("cifarbench.train") and has_module("cifarbench.engine.trainer")


needs_trainer = pytest.mark.skipif(not trainer_available(), reason="cifarbench.train is not importable yet")


TINY_TRAINING = [
    "dataset=synthetic",
    "dataset.source.train_size=128",
    "dataset.source.test_size=64",
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "trainer.eval_batch_size=64",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
]


def train_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = ["-m", "cifarbench.train", *overrides, *TINY_TRAINING, f"paths.output_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    return run_python(args, tmp_path, timeout=HANG_TIMEOUT)


@pytest.mark.slow
@needs_trainer
def test_two_by_two_sweep_on_synthetic_data(tmp_path):
    result = train_sweep(tmp_path, "-m", "model=simple_cnn,resnet20", "loss.label_smoothing=0.0,0.1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    metrics = sorted(sweep_dir.glob("*/metrics.json"))
    assert len(metrics) == 4
    assert all(json.loads(path.read_text())["status"] == "completed" for path in metrics)
    assert (sweep_dir / "results.md").is_file(), "register cifarbench.cli.sweep.SweepReport in hydra.callbacks"
    assert len(table_rows((sweep_dir / "results.md").read_text())) == 4
    # The winner on test accuracy (no validation split here, which the sweep says), with its weights reachable.
    best = json.loads((sweep_dir / "best.json").read_text())
    accuracies = [json.loads(path.read_text())["test"]["acc"] for path in metrics]
    assert best["selected_on_test_set"] and best["metrics"]["test_acc"] == max(accuracies)
    assert (sweep_dir / "best.pt").resolve() == (sweep_dir / best["run"] / "checkpoints" / "best.pt").resolve()
    assert f"sweep: best job {best['run']} with" in result.stdout and "(this selects on the test set)" in result.stdout


@pytest.mark.slow
@needs_trainer
@needs_optuna
def test_optuna_study_of_three_trials_on_synthetic_data(tmp_path):
    result = train_sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3", "model=resnet20")
    sweep_dir = tmp_path / "sweep"
    assert (sweep_dir / "optimization_results.yaml").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 3
    assert len(table_rows((sweep_dir / "results.md").read_text())) == 3
    # Every trial's lr, weight decay and smoothing train this tiny model without a failure.
    assert sweep.sweep_failed_jobs(sweep_dir) == []
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@needs_trainer
@needs_optuna
def test_optuna_study_whose_trials_all_fail_still_completes(tmp_path):
    # Every trial fails validation (lr < 0): the task must return a number Optuna accepts (-inf, not NaN).
    result = train_sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "model=resnet20",
                         "optimizer.lr=-1")  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    assert (sweep_dir / "optimization_results.yaml").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    assert len(sweep.sweep_failed_jobs(sweep_dir)) == 2
    assert result.returncode == sweep.EXIT_JOBS_FAILED
    import optuna

    study = optuna.load_study(study_name="cifarbench", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["FAIL", "FAIL"]


@pytest.mark.slow
@needs_trainer
@needs_optuna
@needs_joblib
def test_pruned_trials_of_two_parallel_jobs_are_recorded_as_pruned_with_their_last_pt(tmp_path):
    """Two joblib worker processes run the trials and report to one SQLite study that the sweeper created; a
    threshold no tiny run reaches prunes every trial after its first evaluated epoch. Each stops there with last.pt,
    metrics.json says pruned, the study records PRUNED (with the reported value), and the sweep exits 0."""
    import optuna

    result = train_sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                         "hydra/launcher=local_parallel", "model=simple_cnn", "model.channels=[8,8]",
                         "model.hidden=16", "trainer.epochs=3", "hydra/sweeper/pruner=none",
                         "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                         "+hydra.sweeper.pruner.lower=0.99")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    study = optuna.load_study(study_name="cifarbench", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["PRUNED"] * 2
    for trial in study.trials:
        run_dir = sweep_dir / f"trial_{trial.number}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "pruned" and metrics["epochs"] == 1 and metrics["optuna_trial"] == trial.number
        assert trial.intermediate_values == {1: metrics["history"][0]["test/acc"]}  # reported by the job
        assert torch_load_epoch(run_dir / "checkpoints" / "last.pt") == 1
    assert "2 of 2 runs were pruned" in result.stdout and "did not complete" not in result.stdout
    assert "## Pruned trials" in (sweep_dir / "results.md").read_text()


def torch_load_epoch(path: Path) -> int:
    from cifarbench.checkpoint import load_checkpoint

    return load_checkpoint(path)["epoch"]


@pytest.mark.slow
@needs_trainer
@needs_joblib
def test_parallel_sweep_records_a_failing_job_and_exits_non_zero(tmp_path):
    result = train_sweep(
        tmp_path, "-m", "hydra/launcher=local_parallel", "model=resnet20", "optimizer.lr=0.05,-1"
    )
    assert result.returncode == sweep.EXIT_JOBS_FAILED, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    statuses = sorted(json.loads(path.read_text())["status"] for path in sweep_dir.glob("*/metrics.json"))
    assert statuses == ["completed", "failed"]  # the failure did not stop the sweep
    markdown = (sweep_dir / "results.md").read_text()
    assert len(table_rows(markdown)) == 2
    assert "optimizer.lr" in markdown.split("## Failed runs")[1]  # listed with its reason


@pytest.mark.slow
@needs_trainer
def test_run_event_files_hold_hparams_confusion_matrix_samples_config_and_scalars(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "run"
    args = ["-m", "cifarbench.train", "model=resnet20", *TINY_TRAINING, f"hydra.run.dir={run_dir}"]
    result = run_python(args, tmp_path, timeout=HANG_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert event_dirs(run_dir) == {run_dir}, "one event dir per run: no add_hparams sub-runs"
    events = read_events(run_dir)
    tags = events.Tags()
    assert {"train/loss", "train/acc", "test/acc", "lr"} <= set(tags["scalars"])
    assert "hp_metric" not in tags["scalars"]
    try:
        content = events.PluginTagToContent("hparams")
    except KeyError:  # no hparams summary at all
        content = {}
    assert "_hparams_/session_start_info" in content, "the run should call log_hparams"
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model"].string_value == "resnet20"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} == set(tensorboard_logging.HPARAM_METRICS)
    assert "hparams/selected_test_acc" in tags["scalars"]
    assert "test/confusion_matrix" in tags["images"], (
        "the trainer should call cifarbench.loggers.tensorboard.log_confusion_matrix"
    )
    assert tensorboard_logging.AUGMENTED_SAMPLES_TAG in tags["images"], (
        "the trainer should call cifarbench.loggers.tensorboard.log_image_grid"
    )
    assert f"{tensorboard_logging.CONFIG_TAG}/text_summary" in tags["tensors"], "the run should call log_config_text"
    assert "test/per_class_accuracy/text_summary" in tags["tensors"]
