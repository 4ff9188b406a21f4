"""CIFAR-10 and CIFAR-100 through torchvision's own loader, into uint8 tensors."""

from __future__ import annotations

import contextlib
import fcntl
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive

from cifarbench.data.splits import ImageSplits, ImageTensors
from cifarbench.errors import DataError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _without_checksums(dataset_class):
    """torchvision's class with per-file md5 checks off.

    torchvision checks every batch file's md5 before loading, which rejects any file that is not the official one
    (small CIFAR-format files in tests, for instance) with a message that can't tell "missing" from "corrupt".
    Existence is still checked; a corrupt file fails to unpickle and gets its own message below; the download
    archive keeps its md5 check; `scripts/prepare_data.py --verify` runs the full md5 check.
    """
    return type(
        f"{dataset_class.__name__}Unverified",
        (dataset_class,),
        {
            "train_list": [[name, None] for name, _ in dataset_class.train_list],
            "test_list": [[name, None] for name, _ in dataset_class.test_list],
            "meta": {**dataset_class.meta, "md5": None},
        },
    )


def _lock_file(root: Path, name: str) -> Path:
    return root / f".{name}.lock"


@contextlib.contextmanager
def _folder_lock(root: Path, name: str):
    """An exclusive lock on `root` held across processes: jobs of a parallel sweep share one data folder."""
    root.mkdir(parents=True, exist_ok=True)
    with open(_lock_file(root, name), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(reader, root: Path) -> bool:
    files = reader.train_list + reader.test_list + [[reader.meta["filename"], None]]
    return all((root / reader.base_folder / name).is_file() for name, _ in files)


def prepare(dataset_class, root: str | Path) -> None:
    """Download and extract the dataset into `root` unless it is there, safely with other processes at it too.

    One process at a time holds the folder's lock; it downloads and extracts into a temporary folder beside the
    data, and renames the extracted folder into place only when complete, so no reader ever sees half a dataset.
    Whoever waited on the lock finds the data there and downloads nothing.
    """
    root = Path(root).expanduser()
    reader = _without_checksums(dataset_class)
    if _is_complete(reader, root):
        return
    # The folders this call creates: a failed download removes them again rather than leave an empty ./data.
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    lock = _lock_file(root, dataset_class.base_folder)
    lock_existed = lock.exists()
    try:
        _download(dataset_class, reader, root)
    except BaseException:
        if not lock_existed:
            lock.unlink(missing_ok=True)
        for folder in created:  # deepest first; only what is still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _download(dataset_class, reader, root: Path) -> None:
    with _folder_lock(root, dataset_class.base_folder):
        if _is_complete(reader, root):
            return
        scratch = Path(tempfile.mkdtemp(prefix=f".{dataset_class.base_folder}.download-", dir=root))
        try:
            download_and_extract_archive(dataset_class.url, download_root=str(scratch),
                                         filename=dataset_class.filename, md5=dataset_class.tgz_md5)
            target = root / dataset_class.base_folder
            if target.exists():  # an incomplete folder from an older, interrupted download
                shutil.rmtree(target)
            (scratch / dataset_class.base_folder).rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _load(dataset_class, root: str | Path, download: bool, mean, std) -> ImageSplits:
    root = Path(root).expanduser()
    folder = root / dataset_class.base_folder
    reader = _without_checksums(dataset_class)
    try:
        if download:
            prepare(dataset_class, root)
        train = reader(str(root), train=True, download=False)
        test = reader(str(root), train=False, download=False)
    except RuntimeError as error:
        if "not found" not in str(error):
            raise
        raise DataError(
            f"{dataset_class.__name__} was not found in {folder}. Either allow the download "
            f"(dataset.source.download=true, on a machine with internet access, or run "
            f"`python scripts/prepare_data.py --data-dir {root}` on a login node), or place the extracted "
            f"'{dataset_class.base_folder}' folder under paths.data_dir={root}"
        ) from None
    except Exception as error:  # noqa: BLE001 - torchvision's download raises URLError/HTTPError and others
        if download and not folder.exists():
            raise DataError(
                f"Downloading {dataset_class.__name__} into {root} failed ({type(error).__name__}: {error}). "
                f"If this machine is offline, prepare the data elsewhere with `python scripts/prepare_data.py` "
                f"and place the extracted '{dataset_class.base_folder}' folder under paths.data_dir={root}"
            ) from None
        if not isinstance(error, (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError)):
            raise
        raise DataError(
            f"{dataset_class.__name__} files in {folder} are corrupt or truncated ({type(error).__name__}: {error}). "
            f"Delete {folder} and download again (dataset.source.download=true or scripts/prepare_data.py)"
        ) from None

    def to_tensors(split) -> ImageTensors:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return ImageTensors(images, torch.tensor(split.targets, dtype=torch.int64))

    return ImageSplits(
        train=to_tensors(train), val=None, test=to_tensors(test), classes=list(train.classes), mean=mean, std=std
    )


def cifar10(root: str | Path, download: bool = True) -> ImageSplits:
    return _load(datasets.CIFAR10, root, download, CIFAR10_MEAN, CIFAR10_STD)


def cifar100(root: str | Path, download: bool = True) -> ImageSplits:
    return _load(datasets.CIFAR100, root, download, CIFAR100_MEAN, CIFAR100_STD)
