"""The user's own images: root/train/<class>/*.png|jpg and root/test/<class>/*, decoded once into uint8 tensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from cifarbench.data.splits import ImageSplits, ImageTensors, channel_stats
from cifarbench.errors import ConfigError, DataError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
STATS_CACHE = ".cifarbench_stats.json"


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(
            f"image folder split {split_dir} does not exist; lay the images out as "
            f"{split_dir.parent}/train/<class>/*.png and {split_dir.parent}/test/<class>/*.png"
        )
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    files = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in EXTENSIONS) for c in classes}
    empty = [name for name, fs in files.items() if not fs]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {split_dir} hold no images "
            f"({', '.join(sorted(EXTENSIONS))}); add images or remove the empty folders"
        )
    return files


def _decode(path: Path, mode: str, image_size: int) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert(mode)
        tensor = TF.pil_to_tensor(image)
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = TF.resize(tensor, [image_size, image_size], antialias=True)
    return tensor


def _load_split(split_dir: Path, classes: list[str], mode: str, image_size: int) -> ImageTensors:
    files = _class_files(split_dir)
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir} has class folder(s) {', '.join(unknown)} that the train split lacks; "
            "both splits must use the same class names"
        )
    images, labels, unreadable = [], [], []
    for label, name in enumerate(classes):
        for path in files.get(name, []):
            try:
                images.append(_decode(path, mode, image_size))
                labels.append(label)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                unreadable.append(str(path))
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise DataError(f"{len(unreadable)} image file(s) could not be read: {shown}. Fix or remove them")
    return ImageTensors(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def _cached_stats(root: Path, train_dir: Path, images: torch.Tensor, image_size: int, channels: int):
    """Mean/std of the training images, cached beside them; recomputed when the file list changes."""
    listing = sorted(f"{p.relative_to(train_dir)}:{p.stat().st_size}" for p in train_dir.rglob("*") if p.is_file())
    key = hashlib.sha256(f"{image_size}|{channels}|{'|'.join(listing)}".encode()).hexdigest()
    cache = root / STATS_CACHE
    try:
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return tuple(stored["mean"]), tuple(stored["std"])
    except (OSError, ValueError, KeyError):
        pass
    mean, std = channel_stats(images)
    try:
        cache.write_text(json.dumps({"key": key, "mean": mean, "std": std}))
    except OSError:
        pass  # a read-only dataset folder just means recomputing next time
    return mean, std


def image_folder(
    root: str | Path,
    image_size: int = 32,
    channels: int = 3,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> ImageSplits:
    if channels not in (1, 3):
        raise ConfigError(f"dataset.in_channels={channels} is not supported for image folders; use 1 or 3")
    if (mean is None) != (std is None):
        raise ConfigError("give both dataset.source.mean and dataset.source.std, or neither to compute them")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set dataset.source.root to your dataset's folder")
    mode = "RGB" if channels == 3 else "L"
    classes = sorted(_class_files(root / "train"))
    train = _load_split(root / "train", classes, mode, image_size)
    test = _load_split(root / "test", classes, mode, image_size)
    if mean is None:
        mean, std = _cached_stats(root, root / "train", train.images, image_size, channels)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"dataset.source.mean/std need {channels} values each, got {list(mean)} and {list(std)}")
    return ImageSplits(train=train, val=None, test=test, classes=classes, mean=tuple(mean), std=tuple(std))
