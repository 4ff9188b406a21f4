"""Fashion-MNIST from its idx files (plain or gzipped), e.g. Debian's /usr/share/datasets/fashion-mnist."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets

from cifarbench.data.splits import ImageSplits, ImageTensors
from cifarbench.errors import ConfigError, DataError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Statistics of the 28x28 training images; zero padding to 32x32 lowers them, see _fit().
MEAN_28, STD_28 = (0.2860,), (0.3530,)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """Parse an idx file: 2 zero bytes, a dtype code, the number of dims, big-endian int32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
            raise ValueError("not an idx file")
        ndim = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        array = np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
        array = array[: int(np.prod(shape))].reshape(shape)
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path} is corrupt or truncated ({error}); reinstall it (Debian: apt-get install --reinstall "
            "dataset-fashion-mnist) or download it again"
        ) from None
    return torch.from_numpy(array.astype(np.int64 if ndim == 1 else np.uint8))


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _fit(images: torch.Tensor, image_size: int, fit: str) -> torch.Tensor:
    if images.shape[-1] == image_size:
        return images
    if fit == "pad":
        total = image_size - images.shape[-1]
        if total < 0:
            raise ConfigError(f"dataset.fit=pad cannot shrink 28x28 images to {image_size}; use dataset.fit=resize")
        return F.pad(images, (total // 2, total - total // 2, total // 2, total - total // 2))
    if fit == "resize":
        resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        return resized.round().clamp(0, 255).to(torch.uint8)
    raise ConfigError(f"dataset.fit={fit!r} is not supported; use pad or resize")


def fashion_mnist(root: str | Path, download: bool = False, image_size: int = 32, fit: str = "pad") -> ImageSplits:
    root = Path(root).expanduser()
    paths = {key: _find(root, stem) for key, stem in FILES.items()}
    if any(p is None for p in paths.values()) and download:
        datasets.FashionMNIST(str(root), train=True, download=True)
        datasets.FashionMNIST(str(root), train=False, download=True)
        paths = {key: _find(root, stem) for key, stem in FILES.items()}
    missing = [FILES[key] for key, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST idx files {', '.join(missing)} were not found in {root}. Point dataset.source.root at "
            "a folder that holds them (Debian: apt-get install dataset-fashion-mnist, then "
            "dataset.source.root=/usr/share/datasets/fashion-mnist), or allow the download with "
            "dataset.source.download=true"
        )
    splits = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"]).unsqueeze(1)
        labels = read_idx(paths[f"{split}_labels"])
        if len(images) != len(labels):
            raise DataError(
                f"{paths[f'{split}_images']} holds {len(images)} images but {paths[f'{split}_labels']} "
                f"holds {len(labels)} labels; one of them is truncated: reinstall or download again"
            )
        splits[split] = ImageTensors(_fit(images, image_size, fit), labels)
    mean, std = MEAN_28, STD_28
    if fit == "pad" and image_size != 28:
        # Zero padding adds black pixels, so the statistics of what the model sees change with the padded area.
        share = (28 * 28) / (image_size * image_size)
        padded_mean = MEAN_28[0] * share
        padded_sq = (STD_28[0] ** 2 + MEAN_28[0] ** 2) * share
        mean, std = (round(padded_mean, 4),), (round((padded_sq - padded_mean**2) ** 0.5, 4),)
    return ImageSplits(train=splits["train"], val=None, test=splits["test"], classes=CLASSES, mean=mean, std=std)
