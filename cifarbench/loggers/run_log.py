"""What a run leaves behind for people: TensorBoard events, metrics.json, log lines and progress bars."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cifarbench.fileio import jsonable, write_json

log = logging.getLogger("cifarbench")


class RunLog:
    """TensorBoard writer and metrics.json of one run directory; inert on non-zero ranks."""

    def __init__(self, run_dir: Path, *, progress_bar: bool, purge_step: int | None = None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        # Bars only make sense on a terminal; in a log file or a SLURM .out they become thousands of lines.
        self.show_bars = enabled and progress_bar and sys.stderr.isatty()
        self.writer = None
        self.bars: list = []  # closed with the log, however the run ended
        if enabled:
            # purge_step drops events a killed run wrote after its last checkpoint, so resumed curves don't fork.
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)

    def bar(self, iterable=None, *, total=None, desc: str = "", leave: bool = False, position: int = 0, **kwargs):
        bar = tqdm(iterable, total=total, desc=desc, leave=leave, position=position, disable=not self.show_bars,
                   dynamic_ncols=True, **kwargs)
        self.bars.append(bar)
        return bar

    def redirect_logging(self):
        """While bars are shown, log lines go through tqdm.write, so they don't glue onto the bar's line."""
        return logging_redirect_tqdm() if self.show_bars else contextlib.nullcontext()

    def scalars(self, metrics: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def write_metrics(self, payload: dict) -> None:
        if self.enabled:
            write_json(self.run_dir / "metrics.json", jsonable(payload))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        self.bars = []
        if self.writer is not None:
            self.writer.close()
            self.writer = None
