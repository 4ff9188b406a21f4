"""Two gloo ranks in one test: waiting for spawned processes without hanging the suite."""

from __future__ import annotations

import time

import pytest


def join_or_fail(context, seconds: float, message: str) -> None:
    """Wait for the processes of `mp.spawn(..., join=False)`; past `seconds`, kill them and fail with `message` (a rank
    that waits on a collective the other skipped never returns by itself)."""
    deadline = time.monotonic() + seconds
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(message)
