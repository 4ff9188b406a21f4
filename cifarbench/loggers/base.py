"""The experiment loggers a run writes to (`logger=[tensorboard,csv,mlflow,wandb]`, conf/logger/), and what they
share.

A logger gets, from the trainer through `RunLog`: the scalars at optimizer steps (the same dict at the same step for
every logger), then at the end the run's hparams with its final metrics, and the resolved config (and, behind an
option, best.pt) as artifacts. What it needs to continue the same remote run after a resume (an MLflow run id, a
W&B run id) is its `state_dict`, which last.pt keeps under "loggers". Only rank 0 builds loggers.

A logger's backend can fail (a tracking server that stops answering, a full disk): `RunLog` turns any exception
from a logger into one warning and drops that logger, so hours of training never end in a logging error.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarbench.errors import ConfigError


@dataclass
class LoggerRun:
    """What a logger knows about the run it records."""

    run_dir: Path
    name: str  # a readable run name: the job's overrides, or the run directory's name
    hparams: dict[str, Any]  # flat key -> scalar (cifarbench.loggers.tensorboard.hparams_from_run)
    overrides: list[str] = field(default_factory=list)
    sweep_dir: str | None = None  # the multirun's directory: its jobs are one group/experiment
    resumed: bool = False
    # The first optimizer step this session logs: a killed session may have logged steps after its last.pt, which
    # this one logs again (the same values: resume is exact). Loggers that can, drop or skip them.
    first_step: int | None = 1  # None: trainer.resume is off, nothing logged before counts

    @classmethod
    def of(cls, cfg, run_dir: Path, run_info: Mapping, *, resumed: bool, first_step: int | None) -> LoggerRun:
        """The trainer's run as loggers see it (run_info: the job's overrides, choices and sweep directory)."""
        from cifarbench.loggers.tensorboard import hparams_from_run

        overrides = list(run_info.get("overrides", []))
        return cls(run_dir=Path(run_dir), name=run_name(run_dir, overrides), overrides=overrides,
                   hparams=hparams_from_run(cfg, overrides, run_info.get("choices", {})),
                   sweep_dir=run_info.get("sweep_dir"), resumed=resumed, first_step=first_step)


class Logger:
    """One experiment-tracking backend. Override what the backend supports; every method may raise (RunLog turns a
    failure into a warning and drops the logger)."""

    name = "logger"

    def start(self, run: LoggerRun, state: Mapping | None) -> None:
        """Open the backend's run: a new one, or with `state` (this logger's state_dict from last.pt) the same one."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at an optimizer step (None values are already dropped)."""

    def log_summary(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int) -> None:
        """The run's hparams and its final metrics (the report's columns), once, at the end of a completed run."""

    def log_artifact(self, path: Path, kind: str) -> None:
        """A file of the run: kind "config" (config.yaml, at the start) or "checkpoint" (best.pt, at the end)."""

    def flush(self) -> None:
        """After each epoch: make what was logged durable."""

    def finish(self, status: str) -> None:
        """The session ends: "completed", "interrupted" (resumable) or "failed"."""

    def state_dict(self) -> dict:
        return {}


def require(package: str, logger: str, extra: str) -> Any:
    """Import an optional backend, or one ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"logger={logger} needs the {package} package, which is not installed; pip install 'cifarbench[{extra}]' "
            f"or choose another logger (logger=tensorboard, logger=csv)"
        ) from None


def build_loggers(node: Mapping | None) -> dict[str, Logger]:
    """`cfg.logger` (name -> config with a `_target_`) as built loggers; a null entry switches one off."""
    from cifarbench.config import build

    loggers = {}
    for name, spec in (node or {}).items():
        if spec is None:
            continue
        built = build(spec)
        if not isinstance(built, Logger):
            raise ConfigError(f"logger.{name}: {spec.get('_target_')} is not a cifarbench.loggers.base.Logger")
        loggers[str(name)] = built
    return loggers


def run_name(run_dir: Path, overrides: list[str]) -> str:
    """The job's overrides without paths (what tells a sweep's runs apart), else the run directory's name."""
    shown = [item for item in overrides if not item.lstrip("+~").startswith(("paths.", "hydra."))]
    return ",".join(shown)[:250] if shown else Path(run_dir).name
