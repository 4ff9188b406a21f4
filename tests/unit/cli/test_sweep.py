"""cifarbench.cli.sweep and the launcher and Optuna configs, composed in-process."""

from __future__ import annotations

import os

import pytest

from cifarbench.cli import sweep
from cifarbench.config import config_dir
from tests.helpers.sweep import has_module, needs_joblib, needs_optuna

needs_submitit = pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_submitit_launcher"), reason="pip install cifarbench[sweep]"
)


def test_parallel_job_slot_outside_hydra_is_zero():
    assert sweep.parallel_job_slot(4) == 0


# --------------------------------------------------------------------------------- launcher / search configs
def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@needs_joblib
def test_local_parallel_extends_the_joblib_plugin():
    launcher = compose_train(["hydra/launcher=local_parallel"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2
    assert "pre_dispatch" in launcher  # the plugin's own keys come along


@needs_submitit
def test_slurm_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(compose_train(["hydra/launcher=slurm"]).hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["max_num_timeout"] > 0
    # submitit refuses to build a SLURM executor without srun; a stub on PATH is enough to render the script.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # The plugin passes shared keys as they are and the others with a slurm_ prefix; submitit rejects unknown ones.
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    launcher.pop("_target_")
    launcher.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=launcher.pop("max_num_timeout")
    )
    launcher["name"] = "cifarbench"
    executor.update_parameters(
        **{key if key in shared else f"slurm_{key}": value for key, value in launcher.items()}
    )
    script = executor._executor._make_submission_file_text("python -m cifarbench.train", "uid")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--requeue", "--signal=USR2@120", "--time=1440"):
        assert f"#SBATCH {line}" in script


@needs_optuna
def test_optuna_search_space_names_keys_of_the_train_config():
    from omegaconf import OmegaConf

    cfg = compose_train(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    expected = {"optimizer.lr", "optimizer.weight_decay", "loss.label_smoothing", "augment.cutout.length"}
    assert set(sweeper.params) == expected
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"the search space names {key}, which the config lacks"
