"""The options of each config group in conf/."""

from __future__ import annotations

from pathlib import Path

from cifarbench.config import config_dir

CONF = Path(config_dir())


GROUPS = ["dataset", "model", "augment", "mix", "optimizer", "scheduler", "trainer", "paths", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))
