"""`logger=mlflow`: each run (each job of a sweep) is an MLflow run, in a real tracking store.

The default store is a SQLite database beside the run directories, `sqlite:///<paths.output_dir>/mlflow.db`, with
the artifacts in `<paths.output_dir>/mlartifacts`; `logger.mlflow.tracking_uri` takes any other (an `http://` server,
Databricks). Browse it with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`.

- The jobs of one sweep share an experiment named after the sweep's directory; single runs go to
  `logger.mlflow.experiment_name` ("cifarbench"). Every override of a job is a tag (`model`, `optimizer.lr`, ...),
  so MLflow's search (`tags.model = 'resnet20'`) and its compare view find runs by what changed.
- The run id is kept in last.pt: a resumed run continues the same MLflow run. The steps a killed session logged
  after its last.pt are not logged twice: the resumed session skips every (metric, step) the store already holds.
- Params are the run's hparams (the same as TensorBoard's HPARAMS); the final metrics (`hparams/*`) are logged at
  the last step; config.yaml is an artifact, and best.pt too with `logger.mlflow.log_checkpoint=true`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifarbench.loggers.base import Logger, LoggerRun, require

# MLflow's run statuses for how a session ended; an interrupted run is resumable, MLflow's KILLED says so best.
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
PARAM_VALUE_LIMIT = 6000  # MLflow stores a param value of at most 6000 characters
BATCH = 900  # log_batch takes at most 1000 metrics per call


class MLflowLogger(Logger):
    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment_name: str = "cifarbench", artifact_location: str | None = None,
                 log_checkpoint: bool = False, tags: Mapping[str, str] | None = None):
        self.mlflow = require("mlflow", "mlflow", "mlflow")
        self.tracking_uri = str(tracking_uri)
        self.experiment_name = str(experiment_name)
        self.artifact_location = artifact_location
        self.log_checkpoint = bool(log_checkpoint)
        self.tags = dict(tags or {})
        self.client = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # a resumed run: metric -> the highest step the store already holds

    def _artifact_location(self) -> str | None:
        if self.artifact_location:
            return str(self.artifact_location)
        if self.tracking_uri.startswith("sqlite:///"):
            # Beside the database, not MLflow's default ./mlruns in whatever directory the run started from.
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return (database.parent / "mlartifacts").resolve().as_uri()
        return None

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location())
        except self.mlflow.exceptions.MlflowException:
            # Another job of the sweep created it in the meantime.
            return self.client.get_experiment_by_name(name).experiment_id

    def start(self, run: LoggerRun, state: Mapping | None) -> None:
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = (state or {}).get("run_id")
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                steps = [metric.step for metric in self.client.get_metric_history(self.run_id, key)]
                self.logged[key] = max(steps, default=-1)
            return
        name = f"sweep {run.sweep_dir}" if run.sweep_dir else self.experiment_name
        tags = {**self.tags, "run_dir": str(Path(run.run_dir).resolve()), "mlflow.note.content": run.name}
        for item in run.overrides:
            key, _, value = item.lstrip("+~").partition("=")
            tags[key] = value
        if run.sweep_dir:
            tags["sweep_dir"] = run.sweep_dir
        created = self.client.create_run(self._experiment_id(name), run_name=run.name, tags=tags)
        self.run_id = created.info.run_id
        self._log_params(run.hparams)

    def _log_params(self, hparams: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:PARAM_VALUE_LIMIT]) for key, value in hparams.items()]
        for start in range(0, len(params), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()
                   if step > self.logged.get(key, -1)]
        for start in range(0, len(entries), BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start:start + BATCH])

    def log_summary(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int) -> None:
        self.log_metrics({key: value for key, value in metrics.items() if value is not None}, step)

    def log_artifact(self, path: Path, kind: str) -> None:
        if kind == "config" or (kind == "checkpoint" and self.log_checkpoint):
            self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints" if kind == "checkpoint"
                                     else None)

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}
