"""What a run leaves behind for people: TensorBoard events, metrics.json, log lines and progress bars."""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from cifarbench.checkpoint import atomic_write
from cifarbench.errors import ConfigError

log = logging.getLogger("cifarbench")


def ensure_writable(directory: str | Path, setting: str) -> None:
    """Create `directory` and write a file in it, or raise one clear ConfigError naming the setting to change."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cifarbench-write-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        culprit = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
        raise ConfigError(
            f"cannot write the run directory {path} ({setting}): {reason}{culprit}; set {setting} (or "
            "paths.output_dir, or CIFARBENCH_ROOT) to a writable folder"
        ) from None


def _finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=str, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def jsonable(value):
    """NaN and inf are not JSON; store them as null so every reader can parse the file."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return _finite_or_none(value)


class RunLog:
    """TensorBoard writer and metrics.json of one run directory; inert on non-zero ranks."""

    def __init__(self, run_dir: Path, *, progress_bar: bool, purge_step: int | None = None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        # Bars only make sense on a terminal; in a log file or a SLURM .out they become thousands of lines.
        self.show_bars = enabled and progress_bar and sys.stderr.isatty()
        self.writer = None
        if enabled:
            # purge_step drops events a killed run wrote after its last checkpoint, so resumed curves don't fork.
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)

    def bar(self, iterable=None, *, total=None, desc: str = "", leave: bool = False, position: int = 0, **kwargs):
        return tqdm(
            iterable, total=total, desc=desc, leave=leave, position=position, disable=not self.show_bars,
            dynamic_ncols=True, **kwargs,
        )

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
        if self.writer is not None:
            self.writer.close()
            self.writer = None
