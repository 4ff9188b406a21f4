"""The user's own images: root/train/<class>/*.png|jpg and root/test/<class>/*, decoded once into uint8 tensors
(cached outside the dataset folder, which is never written to)."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from cifarbench.data.splits import ImageSplits, ImageTensors, channel_stats
from cifarbench.errors import ConfigError, DataError
from cifarbench.fileio import atomic_write

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
log = logging.getLogger("cifarbench")


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


def decode_image(path: Path, mode: str, image_size: int) -> torch.Tensor:
    """One image file as uint8 (C, size, size): converted to `mode` ("RGB" or "L"), resized with antialiasing.
    Training reads image folders with it, and predict reads new images with it, so both see the same pixels."""
    with Image.open(path) as image:
        image = image.convert(mode)
        tensor = TF.pil_to_tensor(image)
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = TF.resize(tensor, [image_size, image_size], antialias=True)
    return tensor


def _decode_all(items: list[tuple[Path, int]], mode: str, image_size: int, what: str) -> ImageTensors:
    images, unreadable = [], []
    for path, _ in tqdm(items, desc=f"decoding {what}", unit="img", disable=not sys.stderr.isatty(), leave=False):
        try:
            images.append(decode_image(path, mode, image_size))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            unreadable.append(str(path))
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise DataError(f"{len(unreadable)} image file(s) could not be read: {shown}. Fix or remove them")
    return ImageTensors(torch.stack(images), torch.tensor([label for _, label in items], dtype=torch.int64))


def _split_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) of a split, in class then file-name order."""
    files = _class_files(split_dir)
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir} has class folder(s) {', '.join(unknown)} that the train split lacks; "
            "both splits must use the same class names"
        )
    return [(path, label) for label, name in enumerate(classes) for path in files.get(name, [])]


def _folder_key(root: Path, items: list[tuple[Path, int]], image_size: int, channels: int) -> str:
    """Changes with the folder's place, its files (names, sizes, times) and the decoding settings."""
    digest = hashlib.sha256(f"{root.resolve()}|{image_size}|{channels}".encode())
    for path, label in items:
        stat = path.stat()
        digest.update(f"|{path.relative_to(root)}:{label}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def count_class_folders(root) -> int | None:
    """`${class_folders:${dataset.source.root}}`: dataset.num_classes of an image folder when it is not given."""
    train = Path(str(root)).expanduser() / "train"
    return sum(1 for p in train.iterdir() if p.is_dir()) if train.is_dir() else None


def image_folder(
    root: str | Path,
    image_size: int = 32,
    channels: int = 3,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    cache_dir: str | Path | None = None,
    cache_budget_gb: float = 2.0,
) -> ImageSplits:
    """Decode the folder once into uint8 tensors. When they fit `cache_budget_gb`, they are kept in
    `cache_dir` (reused while the folder is unchanged) and the fast device loader is preferred; a larger folder is
    decoded on every start and served by the per-sample DataLoader. Nothing is ever written into `root`."""
    if channels not in (1, 3):
        raise ConfigError(f"dataset.in_channels={channels} is not supported for image folders; use 1 or 3")
    if (mean is None) != (std is None):
        raise ConfigError("give both dataset.source.mean and dataset.source.std, or neither to compute them")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set dataset.source.root to your dataset's folder")
    mode = "RGB" if channels == 3 else "L"
    log.info("image folder %s: scanning the class folders", root)
    classes = sorted(_class_files(root / "train"))
    items = {split: _split_files(root / split, classes) for split in ("train", "test")}
    count = sum(len(files) for files in items.values())
    decoded_gb = count * channels * image_size**2 / 2**30
    fits = decoded_gb <= float(cache_budget_gb)
    cache = None
    if fits and cache_dir is not None:
        key = _folder_key(root, items["train"] + items["test"], image_size, channels)
        cache = Path(cache_dir).expanduser() / f"{key}.pt"
    stored = _read_cache(cache) if cache is not None else None
    if stored is None:
        started = time.perf_counter()
        log.info("image folder %s: decoding %d images to %dx%d (%.2f GiB)%s", root, count, image_size, image_size,
                 decoded_gb,
                 f" into the cache {cache}" if cache is not None else "")
        train, test = (_decode_all(items[split], mode, image_size, f"{split} images") for split in ("train", "test"))
        mean_, std_ = channel_stats(train.images)
        # A channel that never varies (a constant background) has nothing to scale; std 0 would divide by zero.
        stored = {"train": train, "test": test, "stats": (mean_, tuple(s if s > 0 else 1.0 for s in std_))}
        log.info("image folder %s: decoded in %.1f s", root, time.perf_counter() - started)
        if cache is not None:
            _write_cache(cache, stored)
    if mean is None:
        mean, std = stored["stats"]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"dataset.source.mean/std need {channels} values each, got {list(mean)} and {list(std)}")
    loader, why = ("device", f"its {decoded_gb:.2f} GiB of decoded images fit dataset.source.cache_budget_gb="
                   f"{cache_budget_gb}") if fits else (
        "torch", f"its {decoded_gb:.2f} GiB of decoded images exceed dataset.source.cache_budget_gb={cache_budget_gb}")
    return ImageSplits(train=stored["train"], val=None, test=stored["test"], classes=classes, mean=tuple(mean),
                       std=tuple(std), preferred_loader=(loader, why))


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        log.info("image folder: decoded images from the cache %s", path)
        return {"train": ImageTensors(*payload["train"]), "test": ImageTensors(*payload["test"]),
                "stats": (tuple(payload["mean"]), tuple(payload["std"]))}
    except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        log.warning("image folder cache %s is unreadable (%s); decoding again", path, type(error).__name__)
        return None


def _write_cache(path: Path, stored: dict) -> None:
    payload = {split: (stored[split].images, stored[split].labels) for split in ("train", "test")}
    payload["mean"], payload["std"] = (list(values) for values in stored["stats"])
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as error:  # a read-only cache folder means decoding again next time, nothing worse
        log.warning("could not write the image cache %s (%s); the images will be decoded again next time", path,
                    error.strerror or error)
