"""A typo on the command line, in any form, gets one line naming the nearest valid choice and exit status 2.

Hydra reports `trainer.epoch=3` as "Could not override ... To append to your config use +trainer.epoch=3", which
sends a user toward adding a key that nothing reads, and `model=resnet21` as the whole list of models plus the
config search path. Before Hydra starts, the entry points compose their config once with the command line's
overrides (each value of a sweep in turn); a composition that fails on an unknown key, group or option becomes
"unknown config key trainer.epoch; did you mean trainer.epochs?". Typos in `+key=` overrides compose fine and are
caught by cifarbench.config.validation with the same kind of message.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from cifarbench.config import config_dir
from cifarbench.errors import EXIT_USER_ERROR

CONFIG_FLAGS = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir"}
# Hydra's own flags that take a value as the next argument.
FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--cfg", "-c",
                    "--package", "-p", "--info", "-i"}


def command_line_overrides(argv: list[str]) -> list[str]:
    overrides, skip = [], False
    for arg in argv:
        if skip and "=" not in arg:  # the flag's own value (--cfg job, -cn train)
            skip = False
            continue
        skip = False
        if arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE
            continue
        if "=" in arg or arg.startswith("~"):
            overrides.append(arg)
    return overrides


def _first_values(overrides: list[str]) -> list[list[str]]:
    """The override lists to compose: all at their first value, then each sweep's other values in turn."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    firsts, alternatives = [], []
    for text in overrides:
        key = text.lstrip("+~").split("=", 1)[0]
        if key.startswith(("hydra.", "hydra/")) and key != "hydra.searchpath":  # extra config dirs compose too
            continue
        try:
            override = parser.parse_override(text)
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        except Exception:  # noqa: BLE001 - unparsable or not a discrete sweep (interval): Hydra reports it itself
            continue
        if values is None:
            firsts.append(text)
            continue
        prefix = text[: len(text) - len(text.lstrip("+~"))]
        choices = [f"{prefix}{override.key_or_group}={value}" for value in values]
        if not choices:
            continue
        alternatives.append((len(firsts), choices[1:]))
        firsts.append(choices[0])
    lists = [firsts]
    for index, others in alternatives:
        lists += [firsts[:index] + [other] + firsts[index + 1:] for other in others]
    return lists


def _flat_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in node.keys() if isinstance(node, DictConfig) else ():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys += _flat_keys(child, f"{path}.")
    return keys


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def _nearest(name: str, candidates: list[str]) -> str | None:
    """The closest candidate; among equally close ones, the one sharing the longest prefix (resnet21 -> resnet20,
    not resnet32)."""
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if not close:
        return None

    def shared_prefix(candidate: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(name, candidate)) if a != b), min(len(name), len(candidate)))

    return max(close, key=lambda c: (round(difflib.SequenceMatcher(None, name, c).ratio(), 6), shared_prefix(c)))


def typo_message(error: Exception, config_name: str, overrides: list[str], command: str = "train") -> str | None:
    """One line for a composition error caused by an unknown key, group or option; None for anything else."""
    from hydra import compose

    text = str(error)
    missing = re.search(r"Could not (?:find|load) '([\w/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = list(getattr(error, "options", None) or _options(group))
        close = _nearest(option, options)
        hint = f"did you mean {group}={close}?" if close else f"the options are: {', '.join(options)}"
        return f"{group}={option}: no such option; {hint} (the options are the files in conf/{group}/)"
    unknown = re.search(r"Could not override '([^']+)'|'([^']+)' does not exist", text)
    if not unknown:
        return None
    key = unknown.group(1) or unknown.group(2)
    # The keys that exist with the command line's group choices (those that compose) in place.
    groups = [item for item in overrides if "." not in item.split("=", 1)[0]]
    try:
        base = compose(config_name, overrides=[g for g in groups if not g.lstrip("+~").startswith(key)])
    except Exception:  # noqa: BLE001
        base = compose(config_name)
    known = _flat_keys(base)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k for k in known if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    group_names = sorted(p.name for p in Path(config_dir()).iterdir() if p.is_dir()) if not parent else []
    close = _nearest(key, siblings + group_names) or _nearest(key, known)
    hint = f"did you mean {close}?" if close else f"the keys there are: {', '.join(sorted(siblings))}"
    return (f"unknown config key {key}: {hint} (python -m cifarbench.{command} --cfg job shows every key; `+` adds "
            "a key only where something reads it)")


def exit_on_typos(config_name: str, command: str, argv: list[str] | None = None) -> None:
    """Compose `config_name` with the command line's overrides; a typo exits with one line and status 2."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = command_line_overrides(argv)
    # Another primary config or config directory: Hydra's own composition is the one to trust.
    if not overrides or any(arg.split("=")[0] in CONFIG_FLAGS for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=config_name):
        for attempt in _first_values(overrides):
            try:
                compose(config_name, overrides=attempt)
            except HydraException as error:
                message = typo_message(error, config_name, attempt, command)
                if message is None:
                    return  # not a typo: Hydra's own report says it best
                print(f"cifarbench: error: {message}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
