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
  owning module), `ndim` (4: conv filters), `classifier` (true: the model's classifier; false: everything else);
- their hyperparameters: `lr` and `weight_decay` (absolute), or `lr_scale` and `weight_decay_scale` (multiples of
  their optimizer's); `layer_decay: d` splits the rule by depth, each layer's lr times d^(layers above it), so the
  classifier keeps the rule's lr and the stem gets the least (layer-wise lr decay, for fine-tuning);
- `train_epochs: N`: trains in epochs 1-N only, then frozen; `frozen_epochs: N`: frozen in epochs 1-N, then trains
  (a frozen-backbone warmup: `+param_groups=frozen_backbone`);
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
RULE_KEYS = ("params", "modules", "ndim", "classifier", "lr", "lr_scale", "weight_decay", "weight_decay_scale",
             "layer_decay", "train_epochs", "frozen_epochs", "schedule_epochs", "optimizer")
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


def classifier_names(model: nn.Module) -> set[str]:
    """The parameters of the model's classifier: timm's `get_classifier()`, else the last nn.Linear (every
    cifarbench network ends in one)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        head = linears[-1] if linears else None
    ids = {id(param) for param in head.parameters()} if head is not None else set()
    return {name for name, param in model.named_parameters() if id(param) in ids}


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth, 0 at the input, for layer-wise lr decay. A timm model says it (its group_matcher:
    embeddings 0, each block one more, the head last); otherwise parameters are grouped by block, their name up to its
    last index (`stages.0.2`, `blocks.3`, `stem.0`; the first part where there is none, as `head`), numbered in
    registration order, and the classifier is the last layer."""
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        return {name: layer for layer, names in group_parameters(model, model.group_matcher(coarse=False)).items()
                for name in names}
    head = classifier_names(model)
    blocks: dict[str, int] = {}
    ids = {}
    for name, _ in model.named_parameters():
        if name in head:
            continue
        parts = name.split(".")[:-1]  # the owning module's path
        numbered = [i for i, part in enumerate(parts) if part.isdigit()]
        block = ".".join(parts[:numbered[-1] + 1]) if numbered else (parts[0] if parts else name)
        ids[name] = blocks.setdefault(block, len(blocks))
    ids.update({name: len(blocks) for name in head})
    return ids


def _split_by_layer(group: dict, model: nn.Module, decay: float, where: str) -> list[dict]:
    """One group per depth, lr x decay^(deepest - depth): the classifier keeps the rule's lr, the stem gets least."""
    if not 0 < float(decay) <= 1:
        raise ConfigError(f"{where}.layer_decay={decay} must be in (0, 1] (ViT fine-tuning uses 0.65-0.75)")
    names = {id(param): name for name, param in model.named_parameters()}
    depth = layer_ids(model)
    deepest = max(depth.values())
    by_layer: dict[int, list] = {}
    for param in group["params"]:
        by_layer.setdefault(depth[names[id(param)]], []).append(param)
    return [{**group, "params": params, "name": f"{group['name']}/layer{layer}",
             "lr": group["lr"] * float(decay) ** (deepest - layer)}
            for layer, params in sorted(by_layer.items())]


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
            "frozen_epochs": rule.get("frozen_epochs"),
            "schedule_epochs": rule.get("schedule_epochs"),
            "_patterns": [str(p) for p in rule.get("params") or []],
            "_types": _module_types(rule.get("modules") or [], where),
            "_ndim": rule.get("ndim"),
            "_classifier": rule.get("classifier"),
            "_layer_decay": rule.get("layer_decay"),
        })
        if rule.get("train_epochs") is not None and rule.get("frozen_epochs") is not None:
            raise ConfigError(f"{where} gives both train_epochs (trains first, then frozen) and frozen_epochs "
                              "(frozen first, then trains); keep one")
    default = {"params": [], "name": "default", "optimizer": MAIN, "lr": lr, "weight_decay": weight_decay,
               "train_epochs": None, "frozen_epochs": None, "schedule_epochs": None}
    head = classifier_names(model) if any(g["_classifier"] is not None for g in groups) else set()
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        for group in groups:
            patterns, types, ndim = group["_patterns"], group["_types"], group["_ndim"]
            classifier = group["_classifier"]
            if ((not patterns or any(fnmatch.fnmatchcase(param_name, p) for p in patterns))
                    and (not types or isinstance(owners[param_name], types))
                    and (ndim is None or param.ndim == int(ndim))
                    and (classifier is None or (param_name in head) == bool(classifier))):
                group["params"].append(param)
                break
        else:
            default["params"].append(param)
    split = []
    for group in groups:
        decay = group.pop("_layer_decay")
        del group["_patterns"], group["_types"], group["_ndim"], group["_classifier"]
        if not group["params"]:
            raise ConfigError(f"param_groups.{group['name']} matches no trainable parameter of the model; "
                              "check its params, modules, ndim and classifier")
        split += _split_by_layer(group, model, decay, f"param_groups.{group['name']}") if decay is not None else [group]
    return [group for group in split + [default] if group["params"]]


def apply_training_windows(optimizer: torch.optim.Optimizer, epochs_done: int) -> None:
    """At the start of an epoch: a group with train_epochs=N trains while fewer than N epochs are done; one with
    frozen_epochs=N (a frozen-backbone warmup) trains once N epochs are done."""
    for group in optimizer.param_groups:
        window, frozen = group.get("train_epochs"), group.get("frozen_epochs")
        if window is None and frozen is None:
            continue
        trains = epochs_done < int(window) if window is not None else epochs_done >= int(frozen)
        for param in group["params"]:
            param.requires_grad_(trains)
