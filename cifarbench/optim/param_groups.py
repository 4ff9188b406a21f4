"""Parameter groups from config: rules that match parameters by name or by the type of the module that owns them,
each with learning-rate and weight-decay multipliers and an optional training window (a freezing schedule).

    param_groups:
      whitening_bias:
        params: [whiten.bias]                               # fnmatch patterns on the parameter's name
        train_epochs: 3                                     # trains in epochs 1-3 only, then frozen
      norm_biases:
        modules: [torch.nn.modules.batchnorm._BatchNorm]   # owned directly by such a module
        params: ["*.bias"]
        lr_scale: 64.0
        weight_decay_scale: 0.015625

A rule's keys:
- which parameters (every given criterion must hold): `params` (fnmatch patterns on names), `modules` (types of the
  owning module), `ndim` (4: conv filters);
- their hyperparameters: `lr` and `weight_decay` (absolute), or `lr_scale` and `weight_decay_scale` (multiples of
  their optimizer's);
- `train_epochs: N`: trains in epochs 1-N only, then frozen;
- `schedule_epochs: N`: the group's lr schedule is fitted to its first N epochs instead of the whole run;
- `optimizer`: the name of an entry of `optimizers` that steps these parameters (cifarbench.optim.optimizer_sets);
  by default the run's `optimizer`.

Rules are named, like callbacks, so a config group adds them: `+param_groups=no_decay` (conf/param_groups/) gives
norms and biases no weight decay. A parameter joins the first rule it matches, in order; the rest form the default
group with the optimizer's own lr and weight decay. Parameters that don't train when the model is built
(requires_grad False) are left out of the optimizer. The names, windows and schedule lengths travel in the
optimizer's param groups, so they are in last.pt.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from cifarbench.errors import ConfigError

log = logging.getLogger("cifarbench")
RULE_KEYS = ("params", "modules", "ndim", "lr", "lr_scale", "weight_decay", "weight_decay_scale", "train_epochs",
             "schedule_epochs", "optimizer")
MAIN = "optimizer"  # the run's own optimizer, which takes every parameter no rule claims


def _module_types(names: Iterable[str], where: str) -> tuple[type, ...]:
    from hydra.utils import get_class

    types = []
    for name in names:
        try:
            types.append(get_class(str(name)))
        except Exception:  # noqa: BLE001 - Hydra raises several kinds; the message says what to write instead
            raise ConfigError(
                f"{where}.modules: {name!r} is not an importable class (e.g. torch.nn.BatchNorm2d)"
            ) from None
    # trainer.sync_batchnorm swaps every BatchNorm for torch.nn.SyncBatchNorm, which is none of BatchNorm1d/2d/3d:
    # a rule naming a batch-norm class also owns that class's synced form.
    if any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in types):
        types.append(nn.SyncBatchNorm)
    return tuple(types)


def _rule_value(rule: Mapping, where: str, key: str, base: float) -> float:
    if key in rule and f"{key}_scale" in rule:
        raise ConfigError(f"{where} gives both {key} and {key}_scale; keep one")
    return float(rule[key]) if key in rule else base * float(rule.get(f"{key}_scale", 1.0))


def build_param_groups(model: nn.Module, rules: Mapping[str, Mapping] | None, lr: float, weight_decay: float,
                       optimizers: Mapping[str, tuple[float, float]] | None = None) -> list[dict]:
    """torch param-group dicts for `model` under `rules`, name -> rule (see the module docstring). `optimizers`:
    the other optimizers' (lr, weight decay), by name. Each group's "optimizer" says which optimizer it belongs to."""
    rules = {name: rule for name, rule in (rules or {}).items() if rule is not None}
    bases = {MAIN: (lr, weight_decay), **(optimizers or {})}
    owners = {f"{prefix}.{name}" if prefix else name: module
              for prefix, module in model.named_modules() for name, _ in module.named_parameters(recurse=False)}
    groups = []
    for name, rule in rules.items():
        where = f"param_groups.{name}"
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; the keys are {', '.join(RULE_KEYS)}")
        owner = str(rule.get("optimizer") or MAIN)
        if owner not in bases:
            raise ConfigError(f"{where}.optimizer={owner!r} names no optimizer; the run has "
                              f"{', '.join(bases)} (add one under `optimizers`)")
        base_lr, base_decay = bases[owner]
        groups.append({
            "params": [], "name": str(name), "optimizer": owner,
            "lr": _rule_value(rule, where, "lr", base_lr),
            "weight_decay": _rule_value(rule, where, "weight_decay", base_decay),
            "train_epochs": rule.get("train_epochs"),
            "schedule_epochs": rule.get("schedule_epochs"),
            "_patterns": [str(p) for p in rule.get("params") or []],
            "_types": _module_types(rule.get("modules") or [], where),
            "_ndim": rule.get("ndim"),
        })
    default = {"params": [], "name": "default", "optimizer": MAIN, "lr": lr, "weight_decay": weight_decay,
               "train_epochs": None, "schedule_epochs": None}
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        for group in groups:
            patterns, types, ndim = group["_patterns"], group["_types"], group["_ndim"]
            if ((not patterns or any(fnmatch.fnmatchcase(param_name, p) for p in patterns))
                    and (not types or isinstance(owners[param_name], types))
                    and (ndim is None or param.ndim == int(ndim))):
                group["params"].append(param)
                break
        else:
            default["params"].append(param)
    for group in groups:
        del group["_patterns"], group["_types"], group["_ndim"]
        if not group["params"]:
            raise ConfigError(f"param_groups.{group['name']} matches no trainable parameter of the model; "
                              "check its params, modules and ndim")
    return [group for group in groups + [default] if group["params"]]


def apply_training_windows(optimizer: torch.optim.Optimizer, epochs_done: int) -> None:
    """At the start of an epoch: a group with train_epochs=N trains while fewer than N epochs are done."""
    for group in optimizer.param_groups:
        window = group.get("train_epochs")
        if window is not None:
            trains = epochs_done < int(window)
            for param in group["params"]:
                param.requires_grad_(trains)
