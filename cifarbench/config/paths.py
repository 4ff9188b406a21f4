"""Where the Hydra config root is."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The Hydra config root: shipped inside an installed package, or conf/ beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "conf"
    if (installed / "train.yaml").is_file():
        return str(installed)
    return str(package.parent / "conf")
