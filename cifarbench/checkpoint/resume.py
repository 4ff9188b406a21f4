"""What a resume may change. Resuming continues the same experiment: keys that only change how a run is watched or
where it runs may differ from the config stored in last.pt, a larger trainer.epochs extends the run (its schedule is
rebuilt for the new total from the current step), and any other difference is refused with the list of keys and
the ways to do what the user probably meant."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cifarbench.compat import KEYS_ADDED, upgrade_config
from cifarbench.errors import ResumeRefusedError
from cifarbench.fileio import read_json

# Keys (or prefixes ending in ".") that change how the run is watched or where it runs, never what it computes.
WATCH_ONLY = (
    "paths.",
    "trainer.progress_bar",
    "trainer.progress_every_s",
    "trainer.log_every_n_steps",
    "trainer.num_threads",
    "trainer.keep_freed_memory",
    "trainer.device",
    "trainer.stop_check_s",
    "trainer.resume",
    "trainer.checkpoint_every_n_epochs",
    "trainer.repeats",  # a repeat's own config says 1; the job's N only decides how many run directories
    "trainer.target_acc",  # watched; trainer.stop_at_target only decides where training stops, as epochs would
    "trainer.stop_at_target",
    "dataset.num_workers",
    "dataset.persistent_workers",
    "dataset.source.root",
    "dataset.source.download",
    "dataset.source.cache_dir",
    "dataset.source.cache_budget_gb",
    "callbacks.tensorboard_extras.",
    "logger",  # where the run is recorded: a resume may add MLflow or drop W&B
    "logger.",
    "*.ns_dtype",  # Muon's Newton-Schulz dtype: bf16 where native, as trainer.device and precision=auto follow the box
)
_ABSENT = object()
log = logging.getLogger("cifarbench")


def is_watch_only(key: str) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name))
               or (name.startswith("*.") and key.endswith(name[1:])) for name in WATCH_ONLY)


def finished_run(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The metrics.json of the run in `run_dir` when it already completed with this config (trainer.resume=auto),
    else None. Rerunning a sweep to finish its missing jobs then leaves the finished ones alone, instead of testing
    each again and adding that time to its wall time. A larger trainer.epochs is an extension: not finished."""
    if str(cfg.trainer.get("resume")) != "auto" or not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    metrics = read_json(run_dir / "metrics.json")
    try:
        saved_yaml = (run_dir / "config.yaml").read_text()
    except OSError:
        return None
    if metrics is None or metrics.get("status") != "completed" or not saved_yaml:
        return None
    try:
        extended_from = check_resume_config(saved_yaml, cfg, str(run_dir / "config.yaml"))
    except ResumeRefusedError:
        return None  # the Trainer refuses it with the whole message
    return metrics if extended_from is None else None


def config_differences(saved, current, prefix: str = "") -> dict[str, tuple]:
    """key -> (saved value, current value) for every difference that matters for the result; a node present on one
    side only is one difference (callbacks.ema: {...} -> (absent)), not one per key inside it."""
    differences = {}
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        before = saved.get(key, KEYS_ADDED.get(name, _ABSENT))
        after = current.get(key, KEYS_ADDED.get(name, _ABSENT))
        if is_watch_only(name):
            continue
        if isinstance(before, dict) and isinstance(after, dict) and before.get("_target_") != after.get("_target_"):
            differences[f"{name}._target_"] = (before.get("_target_", _ABSENT), after.get("_target_", _ABSENT))
        elif isinstance(before, dict) and isinstance(after, dict):
            differences.update(config_differences(before, after, f"{name}."))
        elif before != after:
            differences[name] = (before, after)
    return differences


def _show(value) -> str:
    return "(absent)" if value is _ABSENT else repr(value) if isinstance(value, str) else str(value)


def check_resume_config(saved_yaml: str | None, cfg: DictConfig, source: str,
                        models: tuple[str | None, str] | None = None) -> float | None:
    """None when the run continues as saved; the saved number of epochs when only trainer.epochs grew (an
    extension); a ResumeRefusedError naming every other difference (and both models by name, `models`)."""
    if not saved_yaml:
        return None
    saved = upgrade_config(OmegaConf.to_container(OmegaConf.create(saved_yaml), resolve=False))
    current = OmegaConf.to_container(cfg, resolve=True)
    differences = config_differences(saved, current)
    epochs = differences.pop("trainer.epochs", None)
    if not differences and (epochs is None or float(epochs[1]) > float(epochs[0])):
        return None if epochs is None else float(epochs[0])
    if epochs is not None:
        differences["trainer.epochs"] = epochs
    listed = ", ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, (a, b) in differences.items())
    if models and models[0] and models[0] != models[1]:
        listed = f"the model: {models[0]} -> {models[1]}; {listed}"  # names, beside the keys that differ
    hints = []
    if "trainer.init_from" in differences:
        hints.append("trainer.init_from starts a new run from a checkpoint's weights, and this run directory already "
                     "has its own last.pt: a run is either new or a resume, so give a new hydra.run.dir to start from "
                     "those weights")
    if epochs is not None and float(epochs[1]) < float(epochs[0]):
        hints.append(f"a run cannot be shortened once planned for {epochs[0]} epochs (its schedule depends on it)")
    hints += [
        "to train longer, change only trainer.epochs (larger); the schedule is rebuilt for the new total",
        f"to fine-tune or warm-start, start a new run directory with trainer.init_from={source}",
        "to continue as saved, rerun with the saved values",
    ]
    raise ResumeRefusedError(
        f"{source} was trained with a different config ({listed}); resuming never changes what a run computes: "
        + "; ".join(hints)
    )


def extend_schedule(scheduler, saved_epochs: float, epochs: float, schedule_step: int) -> dict:
    """Continue a run planned for `saved_epochs` as one of `epochs`: the schedule, freshly built for the new total,
    is put at the step the run had reached (the learning rate follows the longer schedule from there on)."""
    from cifarbench.optim.schedules import continue_at

    rates = continue_at(scheduler, schedule_step)
    log.warning("extending this run from %g to %g epochs: the %s schedule is rebuilt for %g epochs and continues "
                "at step %d (lr %.4g)", saved_epochs, epochs, type(scheduler).__name__, epochs, schedule_step, rates[0])
    return {"from_epochs": saved_epochs, "to_epochs": epochs, "at_step": schedule_step, "lr": rates[0]}
