"""Files a run writes, written safely: atomic replaces, JSON that every reader parses, and a writability check.

No torch here, so the entry points' `--help`, the Hydra callbacks and the report start without loading it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from cifarbench.errors import ConfigError


def atomic_write(path: str | Path, write) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # The rename itself lives in the directory entry; sync the directory so it survives a power cut.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str, allow_nan=False))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None where there is none to read: missing, unreadable, torn by a crash of an
    older version, or not an object. Readers of metrics.json treat all of these as "no record"."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def jsonable(value):
    """NaN and inf are not JSON; store them as null so every reader can parse the file."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return _finite_or_none(value)
