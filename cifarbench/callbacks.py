"""Hydra callbacks of `python -m cifarbench.train`."""

from __future__ import annotations

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifarbench.errors import EXIT_USER_ERROR, CifarbenchError
from cifarbench.fileio import ensure_writable


def _exit_unless_writable(directory: str, setting: str) -> None:
    # Hydra turns exceptions from callbacks into warnings, so a clear exit has to happen here.
    try:
        ensure_writable(directory, setting)
    except CifarbenchError as error:
        print(f"cifarbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class CheckOutputDir(Callback):
    """Hydra creates the run directory before the task runs; an unwritable one would end in Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _exit_unless_writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _exit_unless_writable(config.hydra.sweep.dir, "hydra.sweep.dir")
