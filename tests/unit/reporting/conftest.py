"""Fixtures shared by the files of this folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.metrics_files import RUNS


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    for name, metrics in RUNS.items():
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    return sweep
