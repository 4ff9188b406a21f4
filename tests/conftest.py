"""Shared fixtures: tiny CIFAR-format data on disk, configs composed like the CLI does, and in-process runs."""

from __future__ import annotations

import os

# One thread per test process (and for the subprocesses tests start): pytest-xdist runs one process per core,
# and two multi-threaded torch processes on the same cores spend their time waiting for each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pickle  # noqa: E402
from pathlib import Path

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from cifarbench.config import config_dir  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 40, test_size: int = 60, seed: int = 0) -> Path:
    """CIFAR-10 in torchvision's on-disk layout (pickled dicts of uint8 rows), with learnable class colours.

    Each class gets its own mean colour, so a network beats chance within an epoch and the end-to-end tests
    can check that accuracy moved, not just that files appeared.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(30, 226, size=(10, 3))

    def batch(count: int) -> dict:
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = palette[labels][:, :, None, None] + rng.normal(0, 25, size=(count, 3, 32, 32))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(count, 3 * 32 * 32)
        return {"data": data, "labels": labels.tolist(), "batch_label": b"synthetic"}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test_size), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch}, f)
    return root


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")


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


def tiny_cifar_overrides(root: Path) -> list[str]:
    return FAST + [f"paths.data_dir={root}", "dataset.source.download=false"]


def airbench_recipe(root, experiment: str = "airbench94") -> list[str]:
    """The recipe (or airbench94_muon) on 400 CIFAR-format images: 3 steps of 128 per epoch, 2.5 epochs (8 steps)."""
    return [f"experiment={experiment}", f"paths.data_dir={root}", "dataset.source.download=false",
            "trainer.batch_size=128", "trainer.eval_batch_size=200", "trainer.epochs=2.5", "trainer.device=cpu",
            "trainer.num_threads=1", "trainer.deterministic=true", "trainer.progress_bar=false",
            "trainer.log_every_n_steps=1"]


def train_in_process(overrides: list[str], run_dir: Path, info: dict | None = None) -> dict:
    """A Trainer run on a composed config, as `python -m cifarbench.train` does without the process start."""
    from cifarbench.engine.trainer import Trainer

    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir.parent)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Trainer(cfg, run_dir, info or {"overrides": overrides, "choices": {}}).fit()


TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """`cuda` tests skip cleanly on a machine without CUDA (such as CI's)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `python -m pytest -m cuda` on one)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture
def toy_conf(tmp_path, monkeypatch) -> Path:
    """A config dir for Hydra's search path with a BatchNorm-free model (tests/toy_models.py), importable here too,
    so that per-rank and global batches, or accumulated and whole ones, give the same gradients."""
    conf = tmp_path / "extra_conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_conv.yaml").write_text(
        "_target_: toy_models.TinyConvNet\nnum_classes: ${dataset.num_classes}\nin_channels: ${dataset.in_channels}\n"
    )
    monkeypatch.syspath_prepend(str(TESTS))
    return conf.parent


def toy_overrides(toy_conf: Path, batch_size: int) -> list[str]:
    """The toy model on 256 synthetic images, deterministic and single-threaded."""
    return [
        f"hydra.searchpath=[file://{toy_conf}]", "model=tiny_conv", "dataset=synthetic",
        "dataset.source.train_size=256", "dataset.source.test_size=64", "augment=none", "trainer.device=cpu",
        f"trainer.batch_size={batch_size}", "trainer.deterministic=true", "trainer.num_threads=1",
        "trainer.progress_bar=false",
    ]


def toy_trainer(toy_conf: Path, run_dir: Path, extra=(), batch_size: int = 16):
    from cifarbench.engine.trainer import Trainer

    return Trainer(compose_config(toy_overrides(toy_conf, batch_size) + list(extra)), run_dir, {})


def signal_after_step(monkeypatch, sig: int, epoch: int, step: int) -> None:
    """Send `sig` to this process right after micro-batch `step` (1-based) of epoch `epoch` (0-based)."""
    from cifarbench.engine.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if (self.state.epoch, self.state.step_in_epoch) == (epoch, step):
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Deterministic mode and thread counts are process-wide; keep one test's settings out of the next."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def stopped_then_resumed(toy_conf: Path, tmp_path: Path, monkeypatch, extra, rewrite=None, step: int = 5):
    """(straight run, run stopped by SIGTERM after micro-batch `step` of epoch 2 and resumed), both toy Trainers,
    with `rewrite(payload)` applied to last.pt in between."""
    import signal

    from cifarbench import checkpoint
    from cifarbench.engine.trainer import TrainingInterrupted

    straight = toy_trainer(toy_conf, tmp_path / "straight", extra)
    straight.fit()
    signal_after_step(monkeypatch, signal.SIGTERM, epoch=1, step=step)
    with pytest.raises(TrainingInterrupted):
        toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if rewrite is not None:
        checkpoint.save_checkpoint(last, rewrite(checkpoint.load_checkpoint(last)))
    resumed = toy_trainer(toy_conf, tmp_path / "run", extra)
    resumed.fit()
    return straight, resumed
