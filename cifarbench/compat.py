"""Every allowance cifarbench makes for what an older cifarbench wrote or accepted, in one place.

- last.pt layouts (`upgrade_last`): layout 1 kept the training state and EMA/SWA at the top level.
- Training-state fields added later (`STATE_FIELDS_ADDED`): an older last.pt lacks them.
- Config keys added later (`KEYS_ADDED`): a stored config without one is read as if it held the value that
  reproduces what the older run did, so a resume compares like with like.
- Config keys and `_target_`s that moved (`KEYS_MOVED`, `TARGETS_MOVED`, `upgrade_config`): a stored config is
  rewritten to today's names before it is compared or built from; a command line with an old name is refused
  with a message naming the new one (`moved_key_message`).
- metrics.json keys kept for readers of older files (`METRICS_KEPT`).

This module imports nothing else of cifarbench but its errors, so every package may use it. Drop an entry here
once no supported file can need it.
"""

from __future__ import annotations

import copy
from pathlib import Path

from cifarbench.errors import CheckpointError

LAST_LAYOUT = 2  # 1: state and EMA/SWA at the top level of last.pt; 2: "state" and "callbacks"
# The training-state fields of layout 1, as that layout stored them (top-level keys of last.pt).
LAYOUT1_STATE_FIELDS = ("epoch", "step_in_epoch", "epoch_sums", "global_step", "skipped_steps", "train_time",
                        "train_samples", "best", "history")
# Fields of the training state added since, with the value that describes a run saved before them.
STATE_FIELDS_ADDED = {"wall_time_s": 0.0, "sessions": [], "target": None, "extra_passes": 0, "step_curve_from": None}

KEYS_ADDED = {
    "trainer.init_from": None,
    "trainer.progress_every_s": 30.0,
    "trainer.limit_train_batches": None,
    "trainer.limit_eval_batches": None,
    "trainer.overfit_batches": 0,
    "trainer.enable_checkpointing": True,
    "trainer.eval_every_n_epochs": 1,
    "loss.reduction": "mean",
    "param_groups": {},
    "dataset.folds": None,
    "dataset.fold": 0,
}

# Old key -> what to write now (for the message) ; upgrade_config moves the stored values.
KEYS_MOVED = {
    "trainer.tta": "+callbacks=tta callbacks.tta.mode=<none|flip|flip_translate> (test-time augmentation is a "
                   "callback now)",
    "trainer.label_smoothing": "loss.label_smoothing=<value> (the loss owns its label smoothing now)",
}

# Targets of cifarbench 0.1 configs -> today's (the per-depth model factories became a depth argument).
TARGETS_MOVED = {
    **{f"cifarbench.optim.{name}": f"cifarbench.optim.schedules.{name}"
       for name in ("constant", "cosine", "cosine_restarts", "multistep", "onecycle", "piecewise_linear")},
    "cifarbench.muon.Muon": "cifarbench.optim.muon.Muon",
    "cifarbench.losses.CrossEntropy": "cifarbench.losses.cross_entropy.CrossEntropy",
    "cifarbench.tricks.distill.": "cifarbench.losses.distillation.",
    "cifarbench.tricks.": "cifarbench.callbacks.",
    "cifarbench.tensorboard_logging.TensorBoardExtras": "cifarbench.callbacks.tensorboard_extras.TensorBoardExtras",
}
MODEL_FACTORIES = {
    **{f"cifarbench.models.resnet.resnet{d}": ("cifarbench.models.resnet.resnet", d) for d in (18, 34, 50, 101)},
    **{f"cifarbench.models.resnet.resnet{d}": ("cifarbench.models.resnet.cifar_resnet", d)
       for d in (20, 32, 44, 56, 110)},
    "cifarbench.models.preact_resnet.preact_resnet18": ("cifarbench.models.preact_resnet.preact_resnet", 18),
    **{f"cifarbench.models.preact_resnet.preact_resnet{d}": ("cifarbench.models.preact_resnet.cifar_preact_resnet", d)
       for d in (164, 1001)},
}
TTA_TARGET = "cifarbench.callbacks.tta.TestTimeAugmentation"

# metrics.json has always had "swa" (null without SWA); readers of older files may expect it.
METRICS_KEPT = {"swa": None}


def moved_key_message(key: str) -> str | None:
    """The one-line refusal for an old config key, or None if `key` did not move."""
    if key in KEYS_MOVED:
        return f"{key} moved: use {KEYS_MOVED[key]}"
    return None


def _new_target(target: str) -> str:
    """Today's name of a target: an exact entry of TARGETS_MOVED, or one below a moved package ("x." entries)."""
    if target in TARGETS_MOVED:
        return TARGETS_MOVED[target]
    for old, new in TARGETS_MOVED.items():
        if old.endswith(".") and target.startswith(old):
            return new + target[len(old):]
    return target


def upgrade_config(config: dict) -> dict:
    """A stored run config (a plain dict) in today's names: moved keys, moved targets, per-depth factories."""
    config = copy.deepcopy(config)

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                target = node["_target_"]
                if target in MODEL_FACTORIES:
                    node["_target_"], depth = MODEL_FACTORIES[target]
                    node.setdefault("depth", depth)
                else:
                    node["_target_"] = _new_target(target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    trainer = config.get("trainer") or {}
    if "label_smoothing" in trainer:
        value = trainer.pop("label_smoothing")
        if isinstance(config.get("loss"), dict):
            config["loss"].setdefault("label_smoothing", value)
    dataset = config.get("dataset") or {}
    if isinstance(dataset, dict) and "split_seed" not in dataset and "seed" in trainer:
        # The validation split followed the run's seed then; without a split the seed split nothing (the default).
        dataset["split_seed"] = trainer["seed"] if dataset.get("val_size") else 0
    if "seed" in trainer and "seeds" not in trainer:  # before trainer.seeds, one seed drove all three sources
        trainer["seeds"] = {source: trainer["seed"] for source in ("init", "data", "augment")}
    if "tta" in trainer:
        mode = trainer.pop("tta")
        if mode not in (None, "none"):
            config.setdefault("callbacks", {})["tta"] = {"_target_": TTA_TARGET, "mode": mode, "translate_px": 1}
    return config


def upgrade_last(payload: dict, path: Path) -> dict:
    """A last.pt payload in today's layout, with every state field, or a clear error."""
    layout = payload.get("layout", 1)
    if layout == 1 and all(name in payload for name in LAYOUT1_STATE_FIELDS):
        upgraded = {k: v for k, v in payload.items() if k not in LAYOUT1_STATE_FIELDS and k not in ("ema", "swa")}
        upgraded["state"] = {name: payload[name] for name in LAYOUT1_STATE_FIELDS}
        # Layout 1 stored EMA and SWA under the names that their callbacks have now.
        upgraded["callbacks"] = {name: payload[name] for name in ("ema", "swa") if payload.get(name) is not None}
        upgraded["layout"] = LAST_LAYOUT
        payload = upgraded
    elif layout != LAST_LAYOUT:
        raise CheckpointError(
            f"{path} has a last.pt layout ({layout}) this cifarbench cannot read; resume it with the cifarbench that "
            "wrote it, or start a new run from its weights"
        )
    state = payload["state"]
    missing = {name: copy.deepcopy(value) for name, value in STATE_FIELDS_ADDED.items() if name not in state}
    # "loggers" (the experiment loggers' run ids) came later: a run saved before had none to continue.
    return {"loggers": {}, **payload, "state": {**state, **missing}}
