"""A plain (non-editable) `pip install .` ships the configs and runs from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO


@pytest.mark.slow
def test_non_editable_install_runs_from_another_directory(tmp_path):
    venv = tmp_path / "venv"
    # System site-packages provide torch & co.; cifarbench itself is installed into the venv, which shadows any
    # editable install of the checkout.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(REPO)],
        check=True, cwd=tmp_path, timeout=600,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    location = subprocess.run([str(python), "-c", "import cifarbench.config as c; print(c.config_dir())"],
                              capture_output=True, text=True, cwd=workdir, env=env, check=True).stdout.strip()
    assert location.startswith(str(venv)) and (Path(location) / "model" / "wrn_28_10.yaml").is_file()
    # The Optuna sweeper installs under Hydra's plugin namespace (pyproject maps cifarbench/cli/hydra_plugins there),
    # and Hydra finds it: hparams_search=optuna composes with it.
    where = "import hydra_plugins.cifarbench_optuna_sweeper as p; print(p.__file__)"
    plugin = subprocess.run([str(python), "-c", where], capture_output=True, text=True, cwd=workdir, env=env,
                            check=True).stdout.strip()
    assert plugin.startswith(str(venv)), plugin
    search = subprocess.run([str(python), "-m", "cifarbench.train", "hparams_search=optuna", "--cfg", "hydra"],
                            capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert "hydra_plugins.cifarbench_optuna_sweeper.OptunaSweeper" in search.stdout, search.stderr[-2000:]

    job = subprocess.run([str(python), "-m", "cifarbench.train", "--cfg", "job", "model=wrn_28_10", "dataset=cifar100"],
                         capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert job.returncode == 0, job.stderr
    assert "cifarbench.models.wide_resnet" in job.stdout

    run = subprocess.run(
        [str(python), "-m", "cifarbench.train", "model=resnet20", "dataset=synthetic", "dataset.source.train_size=64",
         "dataset.source.test_size=32", "trainer.epochs=1", "trainer.batch_size=32", "trainer.device=cpu"],
        capture_output=True, text=True, cwd=workdir, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = list((workdir / "outputs").rglob("metrics.json"))
    assert len(metrics) == 1 and json.loads(metrics[0].read_text())["status"] == "completed"
