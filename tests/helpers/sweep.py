"""Optional sweep plugins, and TensorBoard events read per writer folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_joblib = pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_joblib_launcher"), reason="pip install cifarbench[sweep]"
)


needs_optuna = pytest.mark.skipif(not has_module("optuna"), reason="pip install cifarbench[sweep]")


# --------------------------------------------------------------------------------------------- TensorBoard
def read_events(log_dir: Path):
    from tensorboard.backend.event_processing import event_accumulator

    size_guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance=size_guidance)
    accumulator.Reload()
    return accumulator


def event_dirs(log_dir: Path) -> set[Path]:
    return {path.parent for path in log_dir.rglob("events.out.tfevents.*")}
