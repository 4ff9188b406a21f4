"""What every section shares: plain-text output (table, say, number formats), synchronised timing, the run header
(device, CPU, versions, git revision) and config composition.

Timers wait for the device (cifarbench.device.synchronize) before they start and stop, so CUDA figures are honest.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision

from cifarbench.device import native_bf16, synchronize

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------- output
def table(headers: list[str], rows: list[list], left: tuple[int, ...] = (0,)) -> str:
    """A plain-text table: columns in `left` are left-aligned, the others right-aligned; floats get few digits."""

    def fmt(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    numeric = [i not in left for i in range(len(headers))]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = [
        "  ".join(h.rjust(w) if num else h.ljust(w) for h, w, num in zip(headers, widths, numeric)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for row in cells:
        out.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def fmt_rates(rates: list[float]) -> str:
    return "[" + ", ".join(f"{r:,.0f}" for r in rates) + "]"


def fmt_times(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.2f}s" for t in times) + "]"


def on_off(flag: bool) -> str:
    return "on" if flag else "-"


# ---------------------------------------------------------------------------------------------------- timing
@contextlib.contextmanager
def stopwatch(device: torch.device, times: list[float]) -> Iterator[None]:
    """Appends the wall time of the block to `times`, the device synchronised before it starts and after it ends."""
    synchronize(device)
    started = time.perf_counter()
    yield
    synchronize(device)
    times.append(time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------- config
def compose(overrides: list[str]):
    """The training config `python -m cifarbench.train <overrides>` would run (conf/train.yaml), without Hydra's job."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cifarbench.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


# ---------------------------------------------------------------------------------------------------- header
def git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{rev}{' (+ uncommitted changes)' if dirty else ''}" if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device, args) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        # Which vector units torch's CPU kernels use (AVX2, AVX512, ...) and whether bf16 is native: CPU figures,
        # bf16 ones above all, mean little without them.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": native_bf16(torch.device("cpu"))[1],
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_revision(),
        "profile": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
