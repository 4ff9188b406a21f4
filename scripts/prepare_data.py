"""Download and check datasets ahead of time, e.g. on a login node for compute nodes without internet.

    python scripts/prepare_data.py --data-dir /shared/data                 # CIFAR-10 and CIFAR-100
    python scripts/prepare_data.py --data-dir /shared/data --datasets cifar10 fashion_mnist
    python scripts/prepare_data.py --data-dir /shared/data --verify-only   # md5 of every file, no download

Then train with `paths.data_dir=/shared/data dataset.source.download=false`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from cifarbench.data.cifar import prepare as prepare_cifar
from cifarbench.errors import CifarbenchError

CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


def verify_cifar(dataset_class, root: Path) -> list[str]:
    """Files whose md5 differs from the published one (torchvision's own checksum table)."""
    folder = root / dataset_class.base_folder
    expected = list(dataset_class.train_list) + list(dataset_class.test_list)
    expected.append([dataset_class.meta["filename"], dataset_class.meta["md5"]])
    return [name for name, md5 in expected if not check_integrity(str(folder / name), md5)]


def prepare(name: str, root: Path, verify_only: bool) -> bool:
    if name in CIFAR:
        dataset_class = CIFAR[name]
        if not verify_only:
            # torchvision shows a progress bar and verifies the archive's md5; the lock keeps concurrent runs apart.
            prepare_cifar(dataset_class, root)
        bad = verify_cifar(dataset_class, root)
        if bad:
            print(f"{name}: {len(bad)} file(s) missing or corrupt in {root / dataset_class.base_folder}: "
                  f"{', '.join(bad)}. Delete that folder and run this script again.")
            return False
        print(f"{name}: ok ({root / dataset_class.base_folder})")
        return True
    if name == "fashion_mnist":
        from cifarbench.data.fashion_mnist import fashion_mnist

        splits = fashion_mnist(root / "fashion-mnist", download=not verify_only)
        print(f"fashion_mnist: ok, {len(splits.train)} train / {len(splits.test)} test ({root / 'fashion-mnist'})")
        return True
    raise SystemExit(f"unknown dataset {name!r}; choose from cifar10, cifar100, fashion_mnist")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="what paths.data_dir will point at")
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    parser.add_argument("--verify-only", action="store_true", help="check what is there; download nothing")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    for name in args.datasets:
        try:
            ok &= prepare(name, args.data_dir, args.verify_only)
        except (CifarbenchError, OSError, RuntimeError) as error:
            print(f"{name}: failed: {error}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
