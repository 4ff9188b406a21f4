"""The checks that turn a bad config value into one clear message: unknown keys (with the nearest valid name),
missing mandatory values, and values out of range."""

from __future__ import annotations

import difflib
import functools
import inspect
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cifarbench.compat import moved_key_message
from cifarbench.config.paths import config_dir
from cifarbench.data.seeds import run_seeds
from cifarbench.errors import ConfigError


def _positive(value, name: str, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a positive number") from None
    if not number > 0:
        raise ConfigError(f"{name}={value!r} must be positive")
    return number


# Top-level nodes of a run config: the groups of conf/train.yaml's defaults list and its own keys.
TOP_LEVEL = ("paths", "dataset", "model", "augment", "mix", "optimizer", "sam", "optimizers", "param_groups", "loss",
             "scheduler", "trainer", "callbacks", "logger")
# Groups whose keys cifarbench knows from its own option files (all options together).
FILE_SCHEMAS = ("trainer", "paths", "dataset")
# Nodes whose keys are the arguments of their `_target_` (a torch optimizer, a schedule factory, a data source).
TARGET_SCHEMAS = ("optimizer", "sam", "scheduler", "dataset.source")
# An entry of `optimizers` (cifarbench.optim.optimizer_sets): another optimizer of the run, with its own schedule.
OPTIMIZER_ENTRY_KEYS = ("optimizer", "scheduler")


@functools.cache
def _option_keys(group: str) -> dict:
    """The keys (nested, as dicts) that any option file of `group` defines; read once per process."""
    keys: dict = {}

    def merge(into: dict, node: dict) -> None:
        for key, value in node.items():
            into.setdefault(key, {})
            if isinstance(value, dict) and "_target_" not in value:
                merge(into[key], value)

    for path in sorted((Path(config_dir()) / group).glob("*.yaml")):
        merge(keys, OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    return keys


def _target_arguments(node: dict) -> set[str] | None:
    """The keyword arguments `node["_target_"]` accepts, or None when it takes **kwargs (anything goes)."""
    from hydra.utils import get_object

    try:
        target = get_object(str(node["_target_"]))
        parameters = inspect.signature(target).parameters.values()
    except Exception:  # noqa: BLE001 - an unimportable target gets Hydra's own message when it is built
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters} | {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _unknown_key_error(where: str, key: str, known) -> ConfigError:
    name = f"{where}.{key}" if where else key
    moved = moved_key_message(name)
    if moved:
        return ConfigError(moved)
    close = difflib.get_close_matches(str(key), sorted(map(str, known)), n=1, cutoff=0.6)
    hint = f"did you mean {f'{where}.' if where else ''}{close[0]}?" if close else (
        f"the keys there are: {', '.join(sorted(map(str, known)))}")
    return ConfigError(f"unknown config key {name}: {hint} (a typo, or a `+` that added a key nothing reads)")


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys that nothing reads, `+` overrides included, naming the nearest valid one."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in plain:
        if key not in TOP_LEVEL:
            raise _unknown_key_error("", key, TOP_LEVEL)

    def walk(where: str, node: dict, schema: dict) -> None:
        for key, value in node.items():
            if key not in schema:
                raise _unknown_key_error(where, key, schema)
            if isinstance(value, dict) and schema[key] and "_target_" not in value:
                walk(f"{where}.{key}", value, schema[key])

    for group in FILE_SCHEMAS:
        if isinstance(plain.get(group), dict):
            walk(group, plain[group], _option_keys(group))
    targets = {path: _node_at(plain, path) for path in TARGET_SCHEMAS}
    for name, entry in (plain.get("optimizers") or {}).items():
        where = f"optimizers.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("optimizer"), dict):
            raise ConfigError(f"{where} must hold an `optimizer` node (with _target_ and lr) and optionally a "
                              "`scheduler` node; see cifarbench/optim/optimizer_sets.py")
        for key in entry:
            if key not in OPTIMIZER_ENTRY_KEYS:
                raise _unknown_key_error(where, key, OPTIMIZER_ENTRY_KEYS)
        if "lr" not in entry["optimizer"]:
            raise ConfigError(f"{where}.optimizer.lr must be given: its param groups scale from it")
        targets.update({f"{where}.{key}": entry.get(key) for key in OPTIMIZER_ENTRY_KEYS})
    for path, node in targets.items():
        if isinstance(node, dict) and "_target_" in node:
            accepted = _target_arguments(node)
            for key in node if accepted is not None else ():
                if key not in accepted:
                    raise _unknown_key_error(path, key, accepted - {"_recursive_", "_convert_", "_args_"})


def _node_at(plain: dict, path: str):
    node = plain
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_required(cfg: DictConfig, command: str = "python -m cifarbench.train") -> None:
    """A mandatory value (`???` in its config file) that nobody gave: one message naming each, with the fix."""
    def walk(where: str, node) -> list[str]:
        if isinstance(node, dict):
            return [key for k, v in node.items() for key in walk(f"{where}.{k}" if where else str(k), v)]
        return [where] if node == "???" else []

    missing = sorted(walk("", OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        example = " ".join(f"{key}=..." for key in missing)
        raise ConfigError(f"{', '.join(missing)} must be given: {command} {example}")


def validate(cfg: DictConfig) -> None:
    """Catch the config mistakes that would otherwise surface as a traceback deep inside a run."""
    check_known_keys(cfg)
    check_required(cfg)
    # Here, so that importing the config helpers loads no torch.
    from cifarbench.data.splits import check_folds
    from cifarbench.device import check_precision

    trainer = cfg.trainer
    _positive(trainer.epochs, "trainer.epochs")  # may be fractional (airbench94 trains 9.9 epochs)
    _positive(trainer.batch_size, "trainer.batch_size", int)
    repeats = trainer.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"trainer.repeats={repeats!r} must be an integer >= 1: the number of runs of this config, "
                          "trainer.seed + 0, 1, ... (1: one run)")
    run_seeds(trainer)
    target = trainer.get("target_acc")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1):
        raise ConfigError(f"trainer.target_acc={target!r} must be an accuracy in (0, 1], e.g. 0.94 (or null: none)")
    if trainer.get("stop_at_target") and target is None:
        raise ConfigError("trainer.stop_at_target=true needs a target: set trainer.target_acc (e.g. 0.94)")
    check_folds(cfg.dataset.get("folds"), cfg.dataset.get("fold", 0))
    _positive(trainer.eval_batch_size, "trainer.eval_batch_size", int)
    if "lr" in cfg.optimizer:
        _positive(cfg.optimizer.lr, "optimizer.lr")
    check_precision(trainer.precision)
    if cfg.get("sam"):
        from cifarbench.optim.sam import check_settings

        check_settings(cfg.sam.get("rho"), cfg.sam.get("eta", 0.0))
    if trainer.grad_clip_norm is not None:
        _positive(trainer.grad_clip_norm, "trainer.grad_clip_norm")
    loss = cfg.get("loss") or {}
    if str(loss.get("_target_", "")).endswith("DistillationLoss") and not loss.get("teacher"):
        raise ConfigError("loss=distillation needs a teacher: loss.teacher=<the best.pt or last.pt of a cifarbench "
                          "run on the same classes>")
    smoothing = (cfg.get("loss") or {}).get("label_smoothing")
    if smoothing is not None and not 0 <= float(smoothing) < 1:
        raise ConfigError(f"loss.label_smoothing={smoothing} must be in [0, 1)")
    if cfg.dataset.loader not in ("torch", "device", "auto"):
        raise ConfigError(f"dataset.loader={cfg.dataset.loader!r} is not supported; use device, torch or auto")
    if trainer.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"trainer.nonfinite={trainer.nonfinite!r} is not supported; use stop or skip")
    _positive(trainer.accumulate_steps, "trainer.accumulate_steps", int)
    for key in ("limit_train_batches", "limit_eval_batches"):
        if trainer.get(key) is not None:
            _positive(trainer[key], f"trainer.{key}", int)
    if int(trainer.get("overfit_batches") or 0) < 0:
        raise ConfigError(f"trainer.overfit_batches={trainer.overfit_batches} must be 0 (off) or a number of batches")
    _positive(trainer.get("progress_every_s", 30), "trainer.progress_every_s")
    if int(trainer.checkpoint_every_n_epochs) < 1:
        raise ConfigError("trainer.checkpoint_every_n_epochs must be >= 1")
