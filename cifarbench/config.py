"""Where the configs live, and the checks that turn a bad config value into one clear message."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cifarbench.errors import CifarbenchError, ConfigError


def config_dir() -> str:
    """The Hydra config root: shipped inside an installed package, or conf/ beside the package in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    if (installed / "train.yaml").is_file():
        return str(installed)
    return str(package.parent / "conf")


def per_dataset(dataset_name: str, values):
    """`${per_dataset:${dataset.name},{cifar10: 0.1, cifar100: 0.5, default: 0.1}}`: a recipe value that its paper
    sets per dataset (PyramidNet's learning rate, for one); `default` serves every other dataset."""
    if dataset_name in values:
        return values[dataset_name]
    if "default" in values:
        return values["default"]
    raise ConfigError(
        f"this recipe gives a value for {', '.join(values)} only, not for dataset={dataset_name}; set the key on "
        "the command line"
    )


# Registered on import: the entry points and the tests import this module before Hydra composes a config.
OmegaConf.register_new_resolver("per_dataset", per_dataset, replace=True)


def _positive(value, name: str, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a positive number") from None
    if not number > 0:
        raise ConfigError(f"{name}={value!r} must be positive")
    return number


def validate(cfg: DictConfig) -> None:
    """Catch the config mistakes that would otherwise surface as a traceback deep inside a run."""
    from cifarbench.device import check_precision  # here, so that importing the config helpers loads no torch

    trainer = cfg.trainer
    _positive(trainer.epochs, "trainer.epochs", int)
    _positive(trainer.batch_size, "trainer.batch_size", int)
    _positive(trainer.eval_batch_size, "trainer.eval_batch_size", int)
    if "lr" in cfg.optimizer:
        _positive(cfg.optimizer.lr, "optimizer.lr")
    check_precision(trainer.precision)
    if trainer.grad_clip_norm is not None:
        _positive(trainer.grad_clip_norm, "trainer.grad_clip_norm")
    if not 0 <= float(trainer.label_smoothing) < 1:
        raise ConfigError(f"trainer.label_smoothing={trainer.label_smoothing} must be in [0, 1)")
    if cfg.dataset.loader not in ("torch", "device"):
        raise ConfigError(f"dataset.loader={cfg.dataset.loader!r} is not supported; use torch or device")
    if trainer.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"trainer.nonfinite={trainer.nonfinite!r} is not supported; use stop or skip")
    if str(trainer.tta) not in ("none", "flip", "flip_translate"):
        raise ConfigError(f"trainer.tta={trainer.tta!r} is not supported; use none, flip or flip_translate")
    _positive(trainer.accumulate_steps, "trainer.accumulate_steps", int)
    if int(trainer.checkpoint_every_n_epochs) < 1:
        raise ConfigError("trainer.checkpoint_every_n_epochs must be >= 1")


def build(node, *args, **kwargs):
    """hydra.utils.instantiate, but a CifarbenchError raised by the target reaches the user as itself.

    Hydra wraps every exception from a `_target_` in an InstantiationException whose text starts with
    "Error in call to target ...", which buries the one line that tells the user what to fix.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, CifarbenchError):
            raise cause from None
        raise
