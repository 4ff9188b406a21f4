"""`logger=wandb`: each run (each job of a sweep) is a Weights & Biases run.

- Offline by default when no API key is set up (neither WANDB_API_KEY nor a `wandb login` in ~/.netrc): the run is
  written under `<run dir>/wandb/offline-run-*`, and `wandb sync <run dir>/wandb/offline-run-*` uploads it later
  (from a login node, say). `logger.wandb.mode=online|offline|disabled` decides it outright.
- The jobs of one sweep share a W&B group named after the sweep's directory; the run's config is its hparams (the
  same as TensorBoard's HPARAMS), and the job's overrides are its name.
- The run id is kept in last.pt: a resumed run continues the same W&B run (`resume="allow"`). W&B itself ignores a
  step lower than the run's current one, so online the steps a killed session logged after its last.pt are not
  logged twice; offline, each session is a separate offline-run folder that `wandb sync` joins into one run.
- The final metrics go into the run's summary; config.yaml is an artifact (type "config"), and best.pt too (type
  "model") with `logger.wandb.log_checkpoint=true`.
"""

from __future__ import annotations

import netrc
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cifarbench.errors import ConfigError
from cifarbench.loggers.base import Logger, LoggerRun, require

MODES = ("auto", "online", "offline", "disabled")
EXIT_CODES = {"completed": 0, "interrupted": 75, "failed": 1}  # 75: the trainer's exit status for a resumable stop


def api_key_configured() -> bool:
    """Whether W&B could log in without asking: WANDB_API_KEY, or the ~/.netrc entry that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, project: str = "cifarbench", entity: str | None = None, mode: str = "auto",
                 log_checkpoint: bool = False, tags: list[str] | None = None):
        if mode not in MODES:
            raise ConfigError(f"logger.wandb.mode={mode!r} is not one of {', '.join(MODES)}")
        self.wandb = require("wandb", "wandb", "wandb")
        self.project, self.entity, self.mode = str(project), entity, str(mode)
        self.log_checkpoint = bool(log_checkpoint)
        self.tags = list(tags or [])
        self.run = None
        self.run_id: str | None = None

    def start(self, run: LoggerRun, state: Mapping | None) -> None:
        mode = self.mode if self.mode != "auto" else "online" if api_key_configured() else "offline"
        self.run_id = (state or {}).get("run_id") or secrets.token_hex(4)  # W&B ids: 8 lowercase characters
        self.run = self.wandb.init(
            project=self.project, entity=self.entity, mode=mode, dir=str(run.run_dir), id=self.run_id,
            resume="allow",
            name=run.name, group=f"sweep {run.sweep_dir}" if run.sweep_dir else None, config=dict(run.hparams),
            tags=self.tags or None, job_type="train", reinit="create_new",
            # No console capture (the run's own log file has it) and no system-stats thread on a training loop.
            settings=self.wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=int(step))

    def log_summary(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int) -> None:
        self.run.summary.update({key: value for key, value in metrics.items() if value is not None})

    def log_artifact(self, path: Path, kind: str) -> None:
        if kind == "checkpoint" and not self.log_checkpoint:
            return
        artifact = self.wandb.Artifact(f"{kind}-{self.run.id}", type="model" if kind == "checkpoint" else kind)
        artifact.add_file(str(path), name=Path(path).name)
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=EXIT_CODES.get(status, 1))
            self.run = None

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}
