"""Tiny datasets written in the on-disk layouts the dataset builders read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

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


def write_cifar100(root: Path, count: int = 20) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
                         "fine_labels": (np.arange(count) % 100).tolist(), "coarse_labels": [0] * count}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:02d}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return root


def write_image_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/{train,test}/<class>/<i>.png: random 8x8 RGB images, `counts[class]` per class and split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root
