"""The logger group (conf/logger/): CSV, MLflow and W&B receive the same scalars at the same optimizer steps as
TensorBoard, the hparams and final metrics, and the config; a resumed run continues the same MLflow run without a
step logged twice; a logger that breaks costs a warning, never the run. Real packages, no network: MLflow writes a
temporary SQLite store, W&B runs offline."""

from __future__ import annotations

import csv
import json
import logging
import sys

import pytest

from cifarbench.engine.trainer import Trainer
from cifarbench.errors import ConfigError
from tests.helpers import wandb_files
from tests.helpers.events import scalars
from tests.helpers.runs import SMALL, build_error, reference_run

# Two epochs of 6 steps (SMALL: 96 images in batches of 16); every step logs its step scalars.
STEPS = 6
LOGGED = SMALL + ["trainer.epochs=2", "trainer.log_every_n_steps=1"]


def epoch_rows(run_dir) -> dict[int, dict]:
    """metrics.json's per-epoch records, by the optimizer step they were logged at (the epoch's last)."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return {record["epoch"] * STEPS: record for record in history}


def mlflow_run(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("cifarbench")
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def test_csv_has_one_row_per_logged_step_with_the_epoch_metrics(tmp_path):
    run_dir = reference_run(LOGGED + ["logger=[tensorboard,csv]"], tmp_path / "run")
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows]
    assert steps == list(range(1, 2 * STEPS + 1)) + [2 * STEPS + 1]  # each step once, then the final metrics
    by_step = {int(row["step"]): row for row in rows}
    for step, record in epoch_rows(run_dir).items():
        assert float(by_step[step]["test/acc"]) == pytest.approx(record["test/acc"], abs=1e-12)
        assert float(by_step[step]["train/loss"]) == pytest.approx(record["train/loss"], abs=1e-12)
    assert by_step[3]["test/acc"] == ""  # a step inside an epoch has no epoch metrics
    # The same scalars as TensorBoard at the same steps.
    tensorboard = scalars(run_dir)["train/loss_step"]
    assert [(int(row["step"]), float(row["train/loss_step"])) for row in rows if row["train/loss_step"]] == [
        (step, pytest.approx(value, rel=1e-6)) for step, value in tensorboard]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert float(by_step[2 * STEPS + 1]["hparams/selected_test_acc"]) == final["test"]["acc"]


def test_mlflow_run_in_a_sqlite_store_matches_metrics_json(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    run_dir = reference_run(LOGGED + ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                                      "logger.mlflow.log_checkpoint=true", "optimizer.lr=0.05"], tmp_path / "run")
    client, runs = mlflow_run(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["optimizer.lr"] == "0.05" and run.data.tags["model"] == "resnet20"  # overrides as tags
    assert run.data.params["optimizer.lr"] == "0.05" and run.data.params["trainer.epochs"] == "2"
    for step, record in epoch_rows(run_dir).items():
        for key in ("train/loss", "test/acc", "lr"):
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            assert history[step] == pytest.approx(record[key], abs=1e-12), (key, step)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert sorted(steps) == list(range(1, 2 * STEPS + 1))
    final = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["hparams/selected_test_acc"] == final["test"]["acc"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "checkpoints"}
    assert [item.path for item in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    # The artifacts sit beside the database, not in ./mlruns of the directory the test ran from.
    assert (tmp_path / "store" / "mlartifacts").is_dir()
    # last.pt keeps the run id.
    from cifarbench import checkpoint

    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["loggers"]["mlflow"] == {"run_id": run.info.run_id}


def test_a_run_resumed_after_a_crash_continues_the_same_mlflow_run_without_duplicated_steps(tmp_path, monkeypatch):
    """A crash at step 4 of epoch 2: steps 7-9 reached MLflow, last.pt is from the end of epoch 1 (step 6). The
    resumed run logs steps 7-12 again; MLflow must hold each step once, with the values of an uninterrupted run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = LOGGED + ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]
    original = Trainer.train_step

    def crash_in_epoch_2(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if (self.state.epoch, self.state.step_in_epoch) == (1, 4):
            raise RuntimeError("the node went away")
        return out

    monkeypatch.setattr(Trainer, "train_step", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="the node went away"):
        reference_run(overrides, tmp_path / "run")
    monkeypatch.undo()
    client, runs = mlflow_run(uri)
    assert [run.info.status for run in runs] == ["FAILED"]
    crashed = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss_step")]
    assert sorted(crashed) == list(range(1, 10))  # the crash came before step 10's hooks
    reference_run(overrides, tmp_path / "run")
    client, runs = mlflow_run(uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    resumed = client.get_metric_history(runs[0].info.run_id, "train/loss_step")
    assert sorted(m.step for m in resumed) == list(range(1, 2 * STEPS + 1))
    straight = reference_run(LOGGED + ["logger=csv"], tmp_path / "straight")
    with (straight / "metrics.csv").open(newline="") as f:
        expected = {int(row["step"]): float(row["train/loss_step"]) for row in csv.DictReader(f)
                    if row["train/loss_step"]}
    assert {m.step: m.value for m in resumed} == pytest.approx(expected, rel=1e-6)


def test_wandb_offline_run_has_its_files_history_and_final_metrics_in_the_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` either: mode=auto is offline
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = reference_run(LOGGED + ["logger=wandb"], tmp_path / "run")
    run_file = wandb_files.run_file(run_dir)
    final = json.loads((run_dir / "metrics.json").read_text())
    summary = wandb_files.summary(run_file, wait_for="hparams/selected_test_acc")
    assert summary["hparams/selected_test_acc"] == final["test"]["acc"]
    assert summary["hparams/final_test_acc"] == final["final_test"]["acc"]
    rows = wandb_files.history(run_file)
    assert [row["_step"] for row in rows if "train/loss_step" in row] == list(range(1, 2 * STEPS + 1))
    by_step = {row["_step"]: row for row in rows}
    for step, record in epoch_rows(run_dir).items():
        assert by_step[step]["test/acc"] == pytest.approx(record["test/acc"], abs=1e-12)
    from cifarbench import checkpoint

    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert run_file.name == f"run-{saved['loggers']['wandb']['run_id']}.wandb"


def test_a_wandb_run_file_read_while_the_service_appends_gives_its_first_records(tmp_path, monkeypatch):
    # W&B's service process writes the run file on its own schedule, so a test may read it mid-append: every
    # prefix of the file must read as a prefix of its records (a torn read failed CI with a protobuf DecodeError).
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_file = wandb_files.run_file(reference_run(SMALL + ["trainer.epochs=1", "logger=wandb"], tmp_path / "run"))
    wandb_files.summary(run_file, wait_for="hparams/selected_test_acc")
    data = run_file.read_bytes()
    whole = [record.SerializeToString() for record in wandb_files.records(run_file)]
    assert len(whole) > 10
    part = tmp_path / "part.wandb"
    for cut in range(8, len(data), 5):
        part.write_bytes(data[:cut])
        read = [record.SerializeToString() for record in wandb_files.records(part)]
        assert read == whole[:len(read)], cut


def test_a_logger_that_cannot_connect_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    # A tracking server nobody answers on (port 9, discard), with MLflow's retries cut so the test is quick.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    caplog.set_level(logging.WARNING, logger="cifarbench")
    run_dir = reference_run(SMALL + ["trainer.epochs=1", "logger=[csv,mlflow]",
                                     "logger.mlflow.tracking_uri=http://127.0.0.1:9"], tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if "logger mlflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "the run goes on without it" in warnings[0]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # the header, the epoch's last step, the end


def test_choosing_a_logger_whose_package_is_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    message = build_error(["logger=mlflow"], tmp_path)
    assert "pip install 'cifarbench[mlflow]'" in message


def test_logger_settings_are_checked(tmp_path):
    assert "logger.wandb.mode='sometimes'" in build_error(["logger=wandb", "logger.wandb.mode=sometimes"], tmp_path)
    with pytest.raises(ConfigError, match="not a cifarbench.loggers.base.Logger"):
        from cifarbench.loggers.base import build_loggers

        build_loggers({"mine": {"_target_": "collections.OrderedDict"}})


def test_a_sweeps_jobs_share_one_mlflow_experiment_with_their_overrides_as_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.helpers.runs import train_in_process

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = str(tmp_path / "multirun" / "2026-12-06" / "10-00-00")
    for job, lr in enumerate(("0.1", "0.05")):
        overrides = SMALL + ["trainer.epochs=1", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                             f"optimizer.lr={lr}"]
        train_in_process(overrides, tmp_path / f"{job}_optimizer.lr={lr}",
                         {"overrides": [f"optimizer.lr={lr}"], "choices": {}, "sweep_dir": sweep_dir})
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"sweep {sweep_dir}")
    runs = client.search_runs([experiment.experiment_id], order_by=["tags.`optimizer.lr` DESC"])
    assert [run.data.tags["optimizer.lr"] for run in runs] == ["0.1", "0.05"]
    assert {run.data.tags["sweep_dir"] for run in runs} == {sweep_dir}
    assert [run.info.run_name for run in runs] == ["optimizer.lr=0.1", "optimizer.lr=0.05"]
    assert client.get_experiment_by_name("cifarbench") is None  # nothing went to the single-run experiment


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    """Offline, each session is its own offline-run folder; both carry the run id kept in last.pt, which is what
    `wandb sync` joins into one run."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    overrides = SMALL + ["trainer.epochs=1", "logger=wandb"]
    reference_run(overrides, tmp_path / "run")
    reference_run(SMALL + ["trainer.epochs=2", "logger=wandb"], tmp_path / "run")  # extended: a second session
    files = sorted((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))
    from cifarbench import checkpoint

    run_id = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["loggers"]["wandb"]["run_id"]
    assert len(files) == 2 and {f.name for f in files} == {f"run-{run_id}.wandb"}
    wandb_files.summary(files[-1], wait_for="hparams/selected_test_acc")  # the service has written it all
    second = wandb_files.history(files[-1])
    assert sorted({row["_step"] for row in second if "train/loss_step" in row}) == [12]  # epoch 2's last step only
