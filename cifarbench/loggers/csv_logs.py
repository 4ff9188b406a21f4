"""`logger=csv`: the run's scalars as `metrics.csv` in the run directory, one row per logged optimizer step.

The columns are `step` and every tag logged so far, sorted; a cell is empty where a tag has no value at that step
(the epoch's metrics exist only at its last step). pandas (`pd.read_csv`), spreadsheets and the csv module read it
as it is. The whole file is rewritten atomically at every flush (each epoch), so a column that appears later still
gets a header, and a killed run leaves a readable file; a resumed session keeps the rows before its first step.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from cifarbench.fileio import write_text
from cifarbench.loggers.base import Logger, LoggerRun

STEP = "step"


class CSVLogger(Logger):
    name = "csv"

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.rows: dict[int, dict[str, float]] = {}
        self.path: Path | None = None

    def start(self, run: LoggerRun, state: Mapping | None) -> None:
        self.path = Path(run.run_dir) / self.filename
        if run.first_step is not None and self.path.is_file():
            # A resumed (or restarted) run keeps what it logged before this session's first step.
            with self.path.open(newline="") as f:
                for row in csv.DictReader(f):
                    step = int(row.pop(STEP))
                    if step < run.first_step:
                        self.rows[step] = {k: float(v) for k, v in row.items() if v not in ("", None)}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})

    def log_summary(self, hparams, metrics: Mapping[str, float | None], step: int) -> None:
        self.log_metrics({k: v for k, v in metrics.items() if v is not None}, step)

    def flush(self) -> None:
        columns = sorted({key for row in self.rows.values() for key in row})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=[STEP, *columns], lineterminator="\n")
        writer.writeheader()
        for step in sorted(self.rows):
            writer.writerow({STEP: step, **{k: repr(v) for k, v in self.rows[step].items()}})
        write_text(self.path, text.getvalue())

    def finish(self, status: str) -> None:
        if self.path is not None:
            self.flush()
