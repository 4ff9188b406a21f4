"""What a run leaves behind for people: the experiment loggers (TensorBoard, CSV, MLflow, W&B: conf/logger/),
metrics.json, log lines and progress bars."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cifarbench.fileio import jsonable, write_json
from cifarbench.loggers.base import Logger, LoggerRun

log = logging.getLogger("cifarbench")


class RunLog:
    """The run's loggers, its metrics.json and its bars; inert on non-zero ranks (they get no loggers).

    Every logger gets the same calls. A logger that raises is dropped with one warning and the run goes on with the
    others: a tracking server that goes away never ends hours of training. `state_dict` (in last.pt) holds each
    logger's run id, so a resumed run continues the same remote run."""

    def __init__(self, run_dir: Path, *, progress_bar: bool, enabled: bool = True,
                 loggers: Mapping[str, Logger] | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        # Bars only make sense on a terminal; in a log file or a SLURM .out they become thousands of lines.
        self.show_bars = enabled and progress_bar and sys.stderr.isatty()
        self.loggers: dict[str, Logger] = dict(loggers or {}) if enabled else {}
        self.saved_state: dict = {}  # the loggers' state from last.pt, until start() hands it to them
        self.started = False
        self.run: LoggerRun | None = None  # what the loggers were started with (its hparams go into the summary)
        self.bars: list = []  # closed with the log, however the run ended

    @property
    def writer(self):
        """The TensorBoard SummaryWriter when logger=tensorboard is on (for images and text), else None."""
        tensorboard = self.loggers.get("tensorboard")
        return getattr(tensorboard, "writer", None)

    # ------------------------------------------------------------------------------------------- loggers
    def _call(self, name: str, method: str, *args) -> None:
        try:
            getattr(self.loggers[name], method)(*args)
        except Exception as error:  # noqa: BLE001 - any backend failure: warn, drop the logger, train on
            first_line = str(error).splitlines()[0] if str(error) else ""
            log.warning("logger %s failed in %s (%s: %s); the run goes on without it", name, method,
                        type(error).__name__, first_line)
            del self.loggers[name]

    def _each(self, method: str, *args) -> None:
        for name in list(self.loggers):
            self._call(name, method, *args)

    def start(self, run: LoggerRun) -> None:
        for name in list(self.loggers):
            self._call(name, "start", run, self.saved_state.get(name))
        self.started, self.run = True, run
        if not run.resumed:
            self.artifact(run.run_dir / "config.yaml", "config")

    def scalars(self, metrics: dict, step: int) -> None:
        values = {tag: float(value) for tag, value in metrics.items() if value is not None}
        if values:
            self._each("log_metrics", values, int(step))

    def summary(self, metrics: Mapping[str, float | None], step: int) -> None:
        """The run's hparams (computed once, when the loggers started) with its final metrics."""
        self._each("log_summary", self.run.hparams, metrics, int(step))

    def artifact(self, path: Path, kind: str) -> None:
        if Path(path).is_file():
            self._each("log_artifact", Path(path), kind)

    def state_dict(self) -> dict:
        states = {}
        for name, logger in self.loggers.items():
            try:
                states[name] = logger.state_dict()
            except Exception:  # noqa: BLE001 - a broken logger must not cost the checkpoint
                states[name] = self.saved_state.get(name, {})
        return states

    def load_state_dict(self, state: Mapping | None) -> None:
        self.saved_state = dict(state or {})

    # ------------------------------------------------------------------------------------ files and bars
    def bar(self, iterable=None, *, total=None, desc: str = "", leave: bool = False, position: int = 0, **kwargs):
        bar = tqdm(iterable, total=total, desc=desc, leave=leave, position=position, disable=not self.show_bars,
                   dynamic_ncols=True, **kwargs)
        self.bars.append(bar)
        return bar

    def redirect_logging(self):
        """While bars are shown, log lines go through tqdm.write, so they don't glue onto the bar's line."""
        return logging_redirect_tqdm() if self.show_bars else contextlib.nullcontext()

    def write_metrics(self, payload: dict) -> None:
        if self.enabled:
            write_json(self.run_dir / "metrics.json", jsonable(payload))

    def flush(self) -> None:
        self._each("flush")

    def close(self, status: str = "failed") -> None:
        """End the session: bars closed, every logger finished with how the run ended."""
        for bar in self.bars:
            bar.close()
        self.bars = []
        if self.started:
            self._each("finish", status)
            self.loggers, self.started = {}, False
