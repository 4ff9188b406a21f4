"""Sweep layer: the multirun callback and exit status, the launcher and Optuna configs, the TensorBoard helpers.

The callback tests run a tiny standalone Hydra app (not the trainer) in a temp dir. The tests marked slow run the
real trainer on synthetic data through the CLI.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarbench.cli import sweep
from cifarbench.config import config_dir
from cifarbench.loggers import tensorboard as tensorboard_logging
from cifarbench.reporting import table as report

ROOT = Path(__file__).resolve().parents[1]


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_joblib = pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_joblib_launcher"), reason="pip install cifarbench[sweep]"
)
needs_submitit = pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_submitit_launcher"), reason="pip install cifarbench[sweep]"
)
needs_optuna = pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_optuna_sweeper"), reason="pip install cifarbench[sweep]"
)


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
        ["app.py", "-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0", "model=bad", "dataset=choice(d1,d2)",
         "lr=interval(0,1)", "hydra.sweep.dir=study"],
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


def test_parallel_job_slot_outside_hydra_is_zero():
    assert sweep.parallel_job_slot(4) == 0


# --------------------------------------------------------------------------------- launcher / search configs
def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@needs_joblib
def test_local_parallel_extends_the_joblib_plugin():
    launcher = compose_train(["hydra/launcher=local_parallel"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2
    assert "pre_dispatch" in launcher  # the plugin's own keys come along


@needs_submitit
def test_slurm_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(compose_train(["hydra/launcher=slurm"]).hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["max_num_timeout"] > 0
    # submitit refuses to build a SLURM executor without srun; a stub on PATH is enough to render the script.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # The plugin passes shared keys as they are and the others with a slurm_ prefix; submitit rejects unknown ones.
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    launcher.pop("_target_")
    launcher.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=launcher.pop("max_num_timeout")
    )
    launcher["name"] = "cifarbench"
    executor.update_parameters(
        **{key if key in shared else f"slurm_{key}": value for key, value in launcher.items()}
    )
    script = executor._executor._make_submission_file_text("python -m cifarbench.train", "uid")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--requeue", "--signal=USR2@120", "--time=1440"):
        assert f"#SBATCH {line}" in script


@needs_optuna
def test_optuna_search_space_names_keys_of_the_train_config():
    from omegaconf import OmegaConf

    cfg = compose_train(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    expected = {"optimizer.lr", "optimizer.weight_decay", "loss.label_smoothing", "augment.cutout.length"}
    assert set(sweeper.params) == expected
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"the search space names {key}, which the config lacks"


# --------------------------------------------------------------------------------------------- TensorBoard
def read_events(log_dir: Path):
    from tensorboard.backend.event_processing import event_accumulator

    size_guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance=size_guidance)
    accumulator.Reload()
    return accumulator


def event_dirs(log_dir: Path) -> set[Path]:
    return {path.parent for path in log_dir.rglob("events.out.tfevents.*")}


def test_hparams_are_written_into_the_writers_own_event_dir(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    hparams = tensorboard_logging.hparams_from_run(
        {
            "optimizer": {"lr": 0.1, "weight_decay": 5e-4},
            "trainer": {"epochs": 3, "seed": 0, "precision": "32"},
            "augment": {"crop": {"padding": 4}, "flip": None, "cutout": {"length": 16}},
        },
        overrides=[
            "model=wrn_28_10",
            "optimizer.lr=0.05",
            "augment=[standard,cutout]",
            "+trainer.compile=true",
        ],
        choices={"model": "wrn_28_10", "dataset": "cifar10", "hydra/launcher": "basic", "experiment": None},
    )
    assert hparams == {
        "optimizer.lr": 0.05, "optimizer.weight_decay": 5e-4, "trainer.epochs": 3, "trainer.seed": 0,
        "trainer.precision": "32", "model": "wrn_28_10", "dataset": "cifar10", "augment": "[standard,cutout]",
        "trainer.compile": True, "augment.ops": "[crop,cutout]",
    }  # fmt: skip
    metrics = tensorboard_logging.hparams_metrics({"best": {"val/acc": 0.95}, "test": {"acc": 0.94, "top5": 0.99}})
    assert metrics["hparams/test_acc"] == 0.94 and metrics["hparams/gflops"] is None

    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_scalar("val/acc", 0.9, 3)
    tensorboard_logging.log_hparams(writer, hparams, metrics, step=3)
    writer.close()

    assert event_dirs(tmp_path) == {tmp_path}  # no sub-run
    events = read_events(tmp_path)
    content = events.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == list(metrics)
    assert {info.name for info in experiment.hparam_infos} == set(hparams)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.05
    assert start.hparams["model"].string_value == "wrn_28_10"
    assert start.hparams["trainer.compile"].string_value == "True"
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == 1  # STATUS_SUCCESS
    scalars = events.Tags()["scalars"]
    assert "hp_metric" not in scalars
    assert {"hparams/best_val_acc", "hparams/test_acc", "hparams/test_top5"} <= set(scalars)
    assert "hparams/gflops" not in scalars  # None is declared, never written
    (value,) = events.Scalars("hparams/test_acc")
    assert value.step == 3 and value.value == pytest.approx(0.94)


def test_failed_run_shows_as_failed_in_hparams(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_hparams(writer, {"model": "resnet18"}, {"hparams/test_acc": None}, status="failed")
    content = read_events(tmp_path).PluginTagToContent("hparams")["_hparams_/session_end_info"]
    assert (
        plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status
        == api_pb2.STATUS_FAILURE
    )


@pytest.mark.parametrize("use_matplotlib", [True, False], ids=["matplotlib", "pure-torch"])
def test_confusion_matrix_image_and_per_class_text(tmp_path, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    confusion = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 5, 5]])
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_confusion_matrix(
            writer, confusion, ["cat", "dog", "frog"], step=7, use_matplotlib=use_matplotlib
        )
    events = read_events(tmp_path)
    assert event_dirs(tmp_path) == {tmp_path}
    (image,) = events.Images("test/confusion_matrix")
    assert image.step == 7
    with Image.open(io.BytesIO(image.encoded_image_string)) as picture:
        assert picture.size[0] >= 200 and picture.size[1] >= 200
    (text,) = events.Tensors("test/per_class_accuracy/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| cat | 80.00 | 8 | 10 |" in table and "| frog | 50.00 | 5 | 10 |" in table


def test_confusion_heatmap_without_matplotlib_is_a_uint8_image():
    image = tensorboard_logging.confusion_heatmap(torch.eye(100, dtype=torch.int64) * 3)
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) >= 256
    assert image[:, 0, 0].tolist() != image[:, 0, -1].tolist()  # the diagonal is darker than the rest


def test_image_grid_and_config_text(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_image_grid(writer, images)
        tensorboard_logging.log_config_text(writer, "model:\n  depth: 20\n")
    events = read_events(tmp_path)
    (grid,) = events.Images(tensorboard_logging.AUGMENTED_SAMPLES_TAG)
    assert (grid.width, grid.height) == (4 * 30 + 2, 3 * 30 + 2)  # 4 per row, 2 px padding
    (text,) = events.Tensors("config/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "```yaml\nmodel:\n  depth: 20\n```"


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
    return run_python(args, tmp_path, timeout=600)


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
def test_sweep_with_a_failing_job_lists_it_and_exits_non_zero(tmp_path):
    result = train_sweep(tmp_path, "-m", "model=resnet20", "optimizer.lr=0.05,-1")
    assert result.returncode == sweep.EXIT_JOBS_FAILED, result.stdout[-3000:] + result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    statuses = sorted(json.loads(path.read_text())["status"] for path in sweep_dir.glob("*/metrics.json"))
    assert statuses == ["completed", "failed"]  # the failure did not stop the sweep
    markdown = (sweep_dir / "results.md").read_text()
    assert len(table_rows(markdown)) == 2
    assert "optimizer.lr" in markdown.split("## Failed runs")[1]  # listed with its reason


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
    assert statuses == ["completed", "failed"]
    assert len(table_rows((sweep_dir / "results.md").read_text())) == 2


@pytest.mark.slow
@needs_trainer
def test_run_event_files_hold_hparams_confusion_matrix_samples_config_and_scalars(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "run"
    args = ["-m", "cifarbench.train", "model=resnet20", *TINY_TRAINING, f"hydra.run.dir={run_dir}"]
    result = run_python(args, tmp_path, timeout=600)
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
    assert "hparams/test_acc" in tags["scalars"]
    assert "test/confusion_matrix" in tags["images"], (
        "the trainer should call cifarbench.loggers.tensorboard.log_confusion_matrix"
    )
    assert tensorboard_logging.AUGMENTED_SAMPLES_TAG in tags["images"], (
        "the trainer should call cifarbench.loggers.tensorboard.log_image_grid"
    )
    assert f"{tensorboard_logging.CONFIG_TAG}/text_summary" in tags["tensors"], "the run should call log_config_text"
    assert "test/per_class_accuracy/text_summary" in tags["tensors"]
