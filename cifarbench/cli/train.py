"""`python -m cifarbench.train [group=option ...] [key=value ...]`: one training run, or a sweep with -m."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from cifarbench.cli.typos import exit_on_typos
from cifarbench.config import config_dir
from cifarbench.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, CifarbenchError, ResumeRefusedError
from cifarbench.fileio import jsonable, read_json, write_json

log = logging.getLogger("cifarbench")


def run_info(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    return {
        "overrides": list(hydra_cfg.overrides.task),
        "choices": {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")},
        "multirun": hydra_cfg.mode == RunMode.MULTIRUN,
        # The jobs of one sweep are one MLflow experiment, one W&B group.
        "sweep_dir": str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None,
        # What Hydra would write to .hydra/ (output_subdir is null): the trainer writes it once the config is
        # accepted, so that a refused resume leaves the run's own record alone.
        "hydra_files": {
            "config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
        },
    }


def record_failure(run_dir: Path, info: dict, error: BaseException, cfg: DictConfig) -> None:
    """A job that dies still leaves a metrics.json, so a sweep's table lists it with its reason."""
    metrics_path = run_dir / "metrics.json"
    run_dir.mkdir(parents=True, exist_ok=True)  # a repeat's directory, refused before its trainer made it
    payload = read_json(metrics_path) or {}
    payload.update({
        "status": "failed",
        "error": f"{type(error).__name__}: {error}" if not isinstance(error, CifarbenchError) else str(error),
        "model": info["choices"].get("model"),
        "dataset": cfg.dataset.get("name") if "dataset" in cfg else None,
        "overrides": info["overrides"],
        "choices": info["choices"],
    })
    write_json(metrics_path, jsonable(payload))


def run(cfg: DictConfig) -> float:
    """The job's value for a sweeper: the monitored metric of its best model, the mean over trainer.repeats."""
    from cifarbench import distributed  # torch stays out of `--help` and `--cfg`

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    info = run_info(cfg)
    # A single run's config was checked before its directory existed (cifarbench.cli.hydra_callbacks.ValidateConfig); a
    # sweep's job is checked by the Trainer and, refused, recorded as a failed job below.
    ctx = distributed.init_process_group()
    if not ctx.is_main:
        quiet_non_main_rank()
    repeats = int(cfg.trainer.get("repeats") or 1)
    if repeats == 1:
        return run_one(cfg, run_dir, info, ctx.is_main)
    values = [run_one(*repeat_run(cfg, run_dir, info, index), ctx.is_main) for index in range(repeats)]
    return min(values) if min(values) == float("-inf") else sum(values) / len(values)


def repeat_run(cfg: DictConfig, run_dir: Path, info: dict, index: int) -> tuple[DictConfig, Path, dict]:
    """Repeat `index` of trainer.repeats: trainer.seed + index (the seeds that follow it follow), in its own run
    directory below the job's, with the seed among its overrides so that its files say which repeat it is."""
    seed = int(cfg.trainer.seed) + index
    repeat_cfg = cfg.copy()
    with open_dict(repeat_cfg):
        repeat_cfg.trainer.seed = seed
        repeat_cfg.trainer.repeats = 1
    overrides = [item for item in info["overrides"] if not item.startswith(("trainer.seed=", "trainer.repeats="))]
    overrides += [f"trainer.seed={seed}"]
    files = dict(info["hydra_files"], **{"config.yaml": OmegaConf.to_yaml(repeat_cfg),
                                          "overrides.yaml": OmegaConf.to_yaml(overrides)})
    return repeat_cfg, run_dir / f"repeat_{index}", {**info, "overrides": overrides, "hydra_files": files}


def run_one(cfg: DictConfig, run_dir: Path, info: dict, is_main: bool) -> float:
    from cifarbench import distributed
    from cifarbench.checkpoint.resume import finished_run
    from cifarbench.engine.trainer import Trainer, TrainingInterrupted

    # Rank 0 decides for all: ranks that each looked could split on a lagging filesystem.
    finished = distributed.broadcast_object(finished_run(run_dir, cfg) if is_main else None)
    if finished is not None:
        log.info("%s already completed with this config (metrics.json); nothing to do. Give a larger "
                 "trainer.epochs to train on, or another hydra.run.dir for a new run", run_dir)
        return float((finished.get("best") or {}).get(finished.get("monitor"), float("-inf")))
    try:
        result = Trainer(cfg, run_dir, info).fit()
    except TrainingInterrupted as stop:
        # metrics.json already says "interrupted"; the distinct status lets schedulers requeue the job.
        log.warning("%s", stop)
        sys.exit(EXIT_INTERRUPTED)
    except (Exception, KeyboardInterrupt) as error:
        # A refused resume (another config) leaves the run directory as it was: its metrics.json says how it ended.
        if is_main and not isinstance(error, ResumeRefusedError):
            record_failure(run_dir, info, error, cfg)
        if info["multirun"] and not isinstance(error, KeyboardInterrupt):
            # One bad job must not end a sweep: it is recorded as failed and the sweep goes on.
            log.error("job failed: %s", error)
            # -inf, not NaN: Optuna records it as a finished, worst trial; a NaN would end the whole study.
            return float("-inf")
        if isinstance(error, CifarbenchError):
            print(f"cifarbench: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    return float(result["best"].get(result["monitor"], float("-inf")))


def quiet_non_main_rank() -> None:
    """Only rank 0 writes the run's log file; the other ranks keep warnings and errors on their stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    logging.getLogger("cifarbench").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train(cfg: DictConfig) -> float:
    started = time.perf_counter()
    value = run(cfg)
    log.info("done in %.1f s", time.perf_counter() - started)
    return value


def main() -> None:
    """`python -m cifarbench.train` and the `cifarbench-train` console script.

    Under torchrun every rank composes its own config, so rank 0's run stamp is shared before Hydra starts (or a
    rank that starts a second later would get a run directory of its own), and the process group is torn down at
    the end, however the run ended.
    """
    # torch (and so cifarbench.distributed) is only imported when torchrun started us or a run actually runs.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from cifarbench import distributed

        distributed.share_run_stamp()
    exit_on_typos("train", "train")
    try:
        train()
    finally:
        if "cifarbench.distributed" in sys.modules:
            sys.modules["cifarbench.distributed"].destroy()


if __name__ == "__main__":
    main()
