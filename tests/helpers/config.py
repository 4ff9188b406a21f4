"""Configs composed like the CLI does, and the override lists the tests share."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cifarbench.config import config_dir


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


# Small and quick on two CPU cores; individual tests override what they look at.
FAST = [
    "model=resnet20",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.device=cpu",
    "trainer.progress_bar=false",
    "trainer.deterministic=true",
    "dataset.num_workers=0",
]


def tiny_cifar_overrides(root: Path, val_size: str = "null") -> list[str]:
    """The 200-image CIFAR-10 of tests/helpers/data.py. Monitored on the test set unless `val_size` is given
    ("0.1": the dataset's default 45k/5k-style split), as most tests look at other things than selection."""
    return FAST + [f"paths.data_dir={root}", "dataset.source.download=false", f"dataset.val_size={val_size}"]


def airbench_recipe(root, experiment: str = "airbench94") -> list[str]:
    """The recipe (or airbench94_muon) on 400 CIFAR-format images: 3 steps of 128 per epoch, 2.5 epochs (8 steps)."""
    return [f"experiment={experiment}", f"paths.data_dir={root}", "dataset.source.download=false",
            "trainer.batch_size=128", "trainer.eval_batch_size=200", "trainer.epochs=2.5", "trainer.device=cpu",
            "trainer.num_threads=1", "trainer.deterministic=true", "trainer.progress_bar=false",
            "trainer.log_every_n_steps=1"]


def toy_overrides(toy_conf: Path, batch_size: int) -> list[str]:
    """The toy model on 256 synthetic images, deterministic and single-threaded."""
    return [
        f"hydra.searchpath=[file://{toy_conf}]", "model=tiny_conv", "dataset=synthetic",
        "dataset.source.train_size=256", "dataset.source.test_size=64", "augment=none", "trainer.device=cpu",
        f"trainer.batch_size={batch_size}", "trainer.deterministic=true", "trainer.num_threads=1",
        "trainer.progress_bar=false",
    ]
