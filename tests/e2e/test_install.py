"""A plain (non-editable) `pip install .` ships the configs and runs from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers.cli import HANG_TIMEOUT
from tests.helpers.paths import REPO


def run_checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run that fails the test with the child's own stderr, not just its exit status."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT, **kwargs)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_non_editable_install_runs_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    # torch & co. come from the environment running the tests, which may itself be a venv (the README's set-up):
    # `--system-site-packages` only reaches the base interpreter's packages, so a .pth file adds this environment's
    # site-packages too. cifarbench itself is installed into the new venv, whose own site-packages come first and
    # shadow the checkout's editable install.
    run_checked([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    venv_site = run_checked([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            cwd=tmp_path).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(venv_site) / "cifarbench-test-parent-env.pth").write_text("\n".join(ours) + "\n")
    run_checked([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(REPO)], cwd=tmp_path)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    location = run_checked([str(python), "-c", "import cifarbench.config as c; print(c.config_dir())"], cwd=workdir,
                           env=env).stdout.strip()
    assert location.startswith(str(venv)) and (Path(location) / "model" / "wrn_28_10.yaml").is_file()
    # The Optuna sweeper installs under Hydra's plugin namespace (pyproject maps cifarbench/cli/hydra_plugins there),
    # and Hydra finds it: hparams_search=optuna composes with it.
    where = "import hydra_plugins.cifarbench_optuna_sweeper as p; print(p.__file__)"
    plugin = run_checked([str(python), "-c", where], cwd=workdir, env=env).stdout.strip()
    assert plugin.startswith(str(venv)), plugin
    search = subprocess.run([str(python), "-m", "cifarbench.train", "hparams_search=optuna", "--cfg", "hydra"],
                            capture_output=True, text=True, cwd=workdir, env=env, timeout=HANG_TIMEOUT)
    assert "hydra_plugins.cifarbench_optuna_sweeper.OptunaSweeper" in search.stdout, search.stderr[-2000:]

    job = subprocess.run([str(python), "-m", "cifarbench.train", "--cfg", "job", "model=wrn_28_10", "dataset=cifar100"],
                         capture_output=True, text=True, cwd=workdir, env=env, timeout=HANG_TIMEOUT)
    assert job.returncode == 0, job.stderr
    assert "cifarbench.models.wide_resnet" in job.stdout

    run = subprocess.run(
        [str(python), "-m", "cifarbench.train", "model=resnet20", "dataset=synthetic", "dataset.source.train_size=64",
         "dataset.source.test_size=32", "trainer.epochs=1", "trainer.batch_size=32", "trainer.device=cpu"],
        capture_output=True, text=True, cwd=workdir, env=env, timeout=HANG_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = list((workdir / "outputs").rglob("metrics.json"))
    assert len(metrics) == 1 and json.loads(metrics[0].read_text())["status"] == "completed"
