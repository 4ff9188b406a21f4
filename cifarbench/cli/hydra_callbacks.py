"""Hydra callbacks of `python -m cifarbench.train`."""

from __future__ import annotations

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifarbench.errors import exit_on_user_error
from cifarbench.fileio import ensure_writable

# Hydra turns exceptions from callbacks into warnings, so a clear exit (one line, status 2) has to happen here.
_exit_unless_writable = exit_on_user_error(ensure_writable)


def _exit_on_config_error(config: DictConfig) -> None:
    from omegaconf import OmegaConf

    from cifarbench.config import validate

    task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    try:
        exit_on_user_error(validate)(task)
    except Exception:  # noqa: BLE001 - a value that only resolves inside the job (${hydra:...}); checked there
        return


class ValidateConfig(Callback):
    """A single run's config mistakes end before Hydra creates its run directory: one line, exit status 2, nothing
    left behind. A sweep's jobs are checked one by one (a sweeper may replace any base value), and a refused job is
    listed as failed in the sweep's table, with its reason."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _exit_on_config_error(config)


class CheckOutputDir(Callback):
    """Hydra creates the run directory before the task runs; an unwritable one would end in Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _exit_unless_writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _exit_unless_writable(config.hydra.sweep.dir, "hydra.sweep.dir")
