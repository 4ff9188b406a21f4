"""The three seeds of a run. `trainer.seeds.{init,data,augment}` default to `trainer.seed`, so one number still
fixes a run; setting one of them apart asks which source of run-to-run variance dominates:

- init: the global RNGs: weight initialisation and the model's own randomness in training (dropout, stochastic
  depth, ShakeDrop);
- data: the order of the training images in each epoch;
- augment: the augmentation draws of every image and the Mixup/CutMix draws.

The module sits in `data`, below the engine and the config, because the loaders use two of the three.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from cifarbench.errors import ConfigError

SOURCES = ("init", "data", "augment")


@dataclass(frozen=True)
class Seeds:
    init: int
    data: int
    augment: int


def run_seeds(trainer_cfg: DictConfig) -> Seeds:
    """The run's seeds; a config from before trainer.seeds (or a node that leaves one out) uses trainer.seed."""
    seed = int(trainer_cfg.seed)
    given = trainer_cfg.get("seeds") or {}
    unknown = sorted(set(given) - set(SOURCES))
    if unknown:
        raise ConfigError(f"trainer.seeds.{unknown[0]} is not a seed; the seeds are {', '.join(SOURCES)}")
    values = {}
    for source in SOURCES:
        value = given.get(source)
        try:
            values[source] = seed if value is None else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"trainer.seeds.{source}={value!r} must be an integer (or null: trainer.seed)") from None
    return Seeds(**values)
