"""Dataset builders (CIFAR, Fashion-MNIST, image folders, synthetic) loaded through the code a run uses, and the
one-line errors for missing, truncated or unreadable data."""

from __future__ import annotations

import gzip
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarbench.data import imagefolder
from cifarbench.data.cifar import cifar10
from cifarbench.data.fashion_mnist import fashion_mnist, read_idx
from cifarbench.data.imagefolder import image_folder
from cifarbench.data.splits import channel_stats
from cifarbench.data.synthetic import synthetic
from cifarbench.engine.trainer import Trainer
from cifarbench.errors import DataError
from tests.helpers.config import compose_config, tiny_cifar_overrides
from tests.helpers.data import write_cifar10, write_image_folder
from tests.helpers.runs import BASE, build_error

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_tiny_cifar_loads_through_torchvision_layout(cifar_root):
    splits = cifar10(cifar_root, download=False)
    assert splits.train.images.shape == (200, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert splits.test.images.shape == (60, 3, 32, 32)
    assert splits.classes[0] == "airplane" and splits.num_classes == 10
    # Class colours survive the HWC -> CHW conversion: every image of a class has the same mean colour.
    means = splits.train.images.float().mean(dim=(2, 3))
    for c in range(10):
        of_class = means[splits.train.labels == c]
        assert (of_class - of_class.mean(0)).abs().max() < 12


def test_missing_cifar_offline_names_the_directory_and_both_fixes(tmp_path):
    with pytest.raises(DataError) as error:
        cifar10(tmp_path / "empty", download=False)
    message = str(error.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message
    assert "dataset.source.download=true" in message and "place the extracted" in message


def test_truncated_meta_file_is_reported_as_corrupt(cifar_root):
    meta = cifar_root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(meta.read_bytes()[:10])
    with pytest.raises(DataError, match="corrupt or truncated"):
        cifar10(cifar_root, download=False)


def test_synthetic_is_deterministic_and_class_dependent():
    a, b = synthetic(seed=1, train_size=200, test_size=50), synthetic(seed=1, train_size=200, test_size=50)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(synthetic(seed=2, train_size=200, test_size=50).train.images, a.train.images)
    # A nearest-class-mean classifier on raw pixels separates the classes: the data are learnable.
    x, y = a.train.images.float().flatten(1), a.train.labels
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    test_x = a.test.images.float().flatten(1)
    accuracy = (torch.cdist(test_x, centroids).argmin(1) == a.test.labels).float().mean()
    assert accuracy > 0.5


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_are_padded_to_32(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    splits = fashion_mnist(tmp_path)
    assert splits.train.images.shape == (30, 1, 32, 32) and splits.in_channels == 1
    assert splits.train.images[:, :, :2].sum() == 0 and splits.train.images[:, :, :, -2:].sum() == 0
    assert splits.test.labels.tolist() == list(range(10))
    resized = fashion_mnist(tmp_path, fit="resize", image_size=24)
    assert resized.train.images.shape == (30, 1, 24, 24)


def test_fashion_mnist_missing_and_truncated_files_are_explained(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(bad)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir() and not os.environ.get("CI"), reason="dataset-fashion-mnist")
def test_debian_fashion_mnist_package_loads():
    splits = fashion_mnist(FASHION_MNIST_DIR)
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    assert splits.mean[0] == pytest.approx(channel_stats(splits.train.images[:5000])[0][0], abs=0.01)


def _image_tree(root: Path, sizes=((40, 30), (64, 64)), per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, colour in (("cat", 200), ("dog", 50)):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                pixels = np.clip(colour + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_decodes_once_into_a_cache_outside_the_dataset_folder(tmp_path, monkeypatch):
    root, cache_dir = tmp_path / "images", tmp_path / "cache"
    _image_tree(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    splits = image_folder(root, image_size=16, cache_dir=cache_dir)
    assert splits.classes == ["cat", "dog"] and splits.preferred_loader[0] == "device"
    assert splits.train.images.shape == (6, 3, 16, 16) and splits.test.images.shape == (6, 3, 16, 16)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.mean == pytest.approx(channel_stats(splits.train.images)[0])
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "nothing may be written into the data"
    assert len(list(cache_dir.glob("*.pt"))) == 1

    # While the folder is unchanged, the cache serves it: no image is decoded again.
    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    again = image_folder(root, image_size=16, cache_dir=cache_dir)
    assert torch.equal(again.train.images, splits.train.images) and again.mean == splits.mean
    monkeypatch.undo()
    # A new image changes the folder: it is decoded again, into a cache entry of its own.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "dog" / "new.png")
    assert len(image_folder(root, image_size=16, cache_dir=cache_dir).train) == 7
    assert len(list(cache_dir.glob("*.pt"))) == 2
    given = image_folder(root, image_size=16, mean=[0.5] * 3, std=[0.25] * 3, cache_dir=cache_dir)
    assert given.mean == (0.5, 0.5, 0.5)


def test_an_image_folder_over_the_memory_budget_gets_the_per_sample_loader_and_no_cache(tmp_path):
    _image_tree(tmp_path / "images")
    splits = image_folder(tmp_path / "images", image_size=16, cache_dir=tmp_path / "cache", cache_budget_gb=1e-6)
    loader, why = splits.preferred_loader
    assert loader == "torch" and "exceed dataset.source.cache_budget_gb=1e-06" in why
    assert not (tmp_path / "cache").exists()
    cfg = compose_config(["dataset=imagefolder", f"dataset.source.root={tmp_path / 'images'}"])
    assert cfg.dataset.num_classes == 2 and cfg.dataset.loader == "auto"


def test_image_folder_empty_class_and_unreadable_files_are_named(tmp_path):
    _image_tree(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(DataError, match=r"bird .* hold no images"):
        image_folder(tmp_path)
    (tmp_path / "train" / "bird").rmdir()
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"could not be read: .*broken.png"):
        image_folder(tmp_path)


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path, monkeypatch):
    from urllib.error import URLError

    from cifarbench.data import cifar

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    (tmp_path / "work").mkdir()
    with pytest.raises(DataError, match="Downloading CIFAR10 .* failed"):
        cifar10(tmp_path / "work" / "data" / "cifar", download=True)
    assert list((tmp_path / "work").iterdir()) == []
    existing = tmp_path / "mine"
    (existing / "keep.txt").parent.mkdir()
    (existing / "keep.txt").write_text("the user's")
    with pytest.raises(DataError):
        cifar10(existing, download=True)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------- data
def test_dataset_missing_offline_without_download(tmp_path):
    empty = tmp_path / "nothing-here"
    message = build_error([f"paths.data_dir={empty}", "dataset.source.download=false"], tmp_path, base=BASE,
                          kind=DataError)
    assert str(empty / "cifar-10-batches-py") in message
    assert "dataset.source.download=true" in message and "prepare_data.py" in message


def test_dataset_missing_and_download_failing_offline_is_not_called_corrupt(tmp_path, monkeypatch):
    """The default download=true on an offline compute node: the message must say the download failed."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "nothing-here"
    message = build_error(["dataset=cifar100", f"paths.data_dir={empty}"], tmp_path, base=BASE, kind=DataError)
    assert "corrupt" not in message, message
    assert re.search(r"[Dd]ownload.*failed", message) and "offline" in message and "prepare_data.py" in message
    assert "cifar-100-python" in message


def test_truncated_batch_file(tmp_path):
    root = write_cifar10(tmp_path / "data", per_batch=8, test_size=16)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:300])
    message = build_error([f"paths.data_dir={root}", "dataset.source.download=false"], tmp_path, base=BASE,
                          kind=DataError)
    assert "corrupt or truncated" in message and str(root / "cifar-10-batches-py") in message and "Delete" in message


def imagefolder_overrides(root: Path) -> list[str]:
    return ["dataset=imagefolder", "dataset.num_classes=2", f"dataset.source.root={root}", "dataset.num_workers=0"]


def test_image_folder_with_an_empty_class(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 0})
    message = build_error(imagefolder_overrides(root), tmp_path, base=BASE, kind=DataError)
    assert "dog" in message and str(root / "train") in message and "no images" in message


def test_image_folder_with_an_unreadable_file(tmp_path):
    root = write_image_folder(tmp_path / "images", {"cat": 4, "dog": 4})
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    message = build_error(imagefolder_overrides(root), tmp_path, base=BASE, kind=DataError)
    assert str(root / "train" / "dog" / "broken.png") in message and "could not be read" in message


def test_image_folder_missing(tmp_path):
    message = build_error(imagefolder_overrides(tmp_path / "no-images"), tmp_path, base=BASE, kind=DataError)
    assert str(tmp_path / "no-images") in message and "dataset.source.root" in message


def test_truncated_batch_file_gives_one_clear_message(tmp_path, cifar_root):
    batch = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    cfg = compose_config(tiny_cifar_overrides(cifar_root))
    from cifarbench.errors import DataError

    with pytest.raises(DataError, match="corrupt or truncated.*Delete .*cifar-10-batches-py"):
        Trainer(cfg, tmp_path / "run", {})
