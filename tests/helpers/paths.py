"""Where the repository and the tests live, for tests that read its files or start child processes."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
