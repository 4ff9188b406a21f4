"""Child processes of the entry points, with a clean environment that can import the worktree's cifarbench."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

# Per child process: a guard against hangs only, never a performance assertion. A loaded 2-core machine ran the
# slowest child for 15 minutes (the airbench SIGKILL runs); an hour is far above any run that is merely slow.
HANG_TIMEOUT = 3600
TIMEOUT = HANG_TIMEOUT


# ------------------------------------------------------------------------------------------------------ helpers
def child_env(extra_path: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # No test may download a dataset: any attempt meets a closed port, as on an offline compute node.
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[proxy] = "http://127.0.0.1:9"
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def cli(module: str, args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=child_env(extra_path), capture_output=True, text=True,
        timeout=TIMEOUT,
    )


def start_training(args: list[str], run_dir: Path, log: Path, extra_path: Path | None = None) -> subprocess.Popen:
    """`python -m cifarbench.train` in the background; stdout and stderr go to `log` (a pipe could fill up)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cifarbench.train", *args, f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent, env=child_env(extra_path), stdout=out, stderr=subprocess.STDOUT, text=True,
        )


def wait_until(condition, proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
