"""Checkpoints: atomic writes, safe loads, and the model rebuilt from the config stored inside.

A checkpoint holds tensors and plain containers only. The run's config is stored as a YAML string, never as a
pickled object, so `torch.load(weights_only=True)` can read it and a crafted file cannot run code on load.
"""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cifarbench.compat import upgrade_config
from cifarbench.config import build
from cifarbench.errors import CheckpointError
from cifarbench.fileio import atomic_write

FORMAT = "cifarbench"
VERSION = 1


# What torch's zip writer says when the file system refuses a write (a full disk, a quota): the C++ writer reports
# a position mismatch or a failed write, not the OSError underneath.
_WRITE_FAILED = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically; a failed write (full disk, quota, read-only mount) is one CheckpointError naming the file
    and the space left, and the previous file of that name is kept."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not _WRITE_FAILED.search(str(error)):
            raise
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed"
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        kept = "the previous one is kept" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write the checkpoint {path} ({reason}; {free}); {kept}. Free disk space, or point the run "
            "directory (hydra.run.dir) at a file system with room, and resume (trainer.resume=auto)"
        ) from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path (runs keep them in <run dir>/checkpoints/)"
        )
    try:
        with warnings.catch_warnings():
            # Random bytes read as a "pickle protocol N" draw a UserWarning before the error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
        unsafe = next((line for line in lines if "Unsupported global" in line or "GLOBAL" in line), None)
        if unsafe is None:
            # Random bytes or another file type also fail inside the unpickler, but they could run nothing.
            reason = next((line for line in lines if "operand" in line or "load key" in line), "unpickling failed")
            raise CheckpointError(
                f"{path} is corrupt or not a PyTorch checkpoint ({reason[:200]}); give the best.pt or last.pt of a "
                "cifarbench run"
            ) from None
        culprit = unsafe.removeprefix("WeightsUnpickler error: ").split(". Please use")[0]
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run code "
            f"when unpickled ({culprit[:200]}). Only load checkpoints written by cifarbench"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            UnicodeDecodeError, OverflowError) as error:
        # A truncated file, or bytes that the unpickler misreads (a corrupt file fails in many ways in there).
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {str(error)[:200]}); "
            "it may be truncated or corrupt: use another checkpoint, e.g. best.pt instead of last.pt"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a cifarbench checkpoint (it lacks format={FORMAT!r}); give the best.pt or last.pt "
            "of a cifarbench run"
        )
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer cifarbench (checkpoint version {payload['version']} > {VERSION}); "
            "upgrade cifarbench to read it"
        )
    return payload


def stored_config(payload: dict) -> DictConfig:
    """The run config stored in a checkpoint, in today's key and target names (cifarbench.compat)."""
    return OmegaConf.create(upgrade_config(OmegaConf.to_container(OmegaConf.create(payload["config"]))))


def load_model_weights(model: torch.nn.Module, weights: dict, *, source: str, expected_arch: str | None = None,
                       saved_arch: str | None = None):
    """load_state_dict with a message that names both architectures when they differ."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        detail = str(error).split("\n\t")[1:3]
        ours = expected_arch or type(model).__name__
        theirs = f"a {saved_arch}" if saved_arch else "another architecture"
        raise CheckpointError(
            f"{source} holds {theirs}, whose weights do not fit this run's model {ours} "
            f"({'; '.join(d.strip() for d in detail)[:300]}); pick the matching model="
            f"{saved_arch or '...'} (and dataset=), or rebuild the model from the checkpoint's own config"
        ) from None


def without_pretrained(model_cfg):
    """The model node with its pretrained weights switched off (model=timm's pretrained, pretrained_file): weights
    that a checkpoint replaces are neither downloaded nor read."""
    from omegaconf import OmegaConf, open_dict

    if "pretrained" not in model_cfg and "pretrained_file" not in model_cfg:
        return model_cfg
    model_cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    with open_dict(model_cfg):
        model_cfg.pretrained, model_cfg.pretrained_file = False, None
    return model_cfg


def model_from_checkpoint(payload: dict, source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the network from the config stored in the checkpoint and load its weights."""
    config = stored_config(payload)
    model = build(without_pretrained(config.model))
    load_model_weights(model, payload["model"], source=source, expected_arch=payload.get("model_name"))
    return model
