"""last.pt and best.pt. last.pt is every stateful part of a run, saved and restored by iterating over a registry:
shared parts (model, optimizer, scheduler, scaler, training state), per-rank parts (the train loader's position
and the RNG streams, gathered from every rank into rank 0's file) and the callbacks that have state, by name, as
Lightning keeps checkpoint["callbacks"][name]. A new stateful part is one more registry entry, nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cifarbench import checkpoint, distributed
from cifarbench.compat import LAST_LAYOUT, upgrade_last
from cifarbench.distributed import DistContext
from cifarbench.errors import CheckpointError

log = logging.getLogger("cifarbench")



class CheckedModel:
    """The model as a registry part: loading names both architectures when the weights don't fit."""

    def __init__(self, model: torch.nn.Module, model_name: str):
        self.model, self.model_name = model, model_name

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, weights: dict, saved_arch: str | None = None, source: str = "checkpoint") -> None:
        checkpoint.load_model_weights(self.model, weights, source=source, expected_arch=self.model_name,
                                      saved_arch=saved_arch)


def resume_path(run_dir: Path, resume) -> Path | None:
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            log.info("trainer.resume=auto: no %s yet, starting a fresh run", path)
            return None
        return path
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"trainer.resume={resume}: no such file; give the path of a run's checkpoints/last.pt, or "
            "trainer.resume=auto to continue the run in hydra.run.dir"
        )
    return path


def agree_on_resume(run_dir: Path, resume, dist: DistContext) -> tuple[Path | None, dict | None]:
    """(path, payload) of the last.pt this run resumes from, the same for every rank, or (None, None).

    Rank 0 alone looks for the checkpoint and tells the others which one it chose: on a node-local or lagging
    filesystem, ranks that each looked for themselves could split, rank 0 resuming while the others start fresh,
    and then train out of step until they hang. A rank that can't read rank 0's choice stops every rank with one
    message naming the file and the node.
    """
    if not dist.enabled:
        path = resume_path(run_dir, resume)
        return path, read_last(path) if path is not None else None
    choice = {"path": None, "error": None}
    if dist.is_main:
        try:
            found = resume_path(run_dir, resume)
            choice["path"] = str(found.resolve()) if found is not None else None
        except CheckpointError as error:
            choice["error"] = str(error)
    choice = distributed.broadcast_object(choice)
    if choice["error"]:
        raise CheckpointError(choice["error"])
    if choice["path"] is None:
        return None, None
    path, payload, problem = Path(choice["path"]), None, None
    try:
        payload = read_last(path)
    except (CheckpointError, OSError) as error:
        import socket

        problem = (f"rank {dist.rank} on node {socket.gethostname()} cannot read {path}, the last.pt that rank 0 "
                   f"resumes from ({error}); put the run directory (hydra.run.dir) on a filesystem that every node "
                   "sees, or start a new run")
    problems = [p for p in distributed.all_gather_objects(problem) if p]
    if problems:
        raise CheckpointError(problems[0])
    return path, payload


def read_last(path: Path) -> dict:
    """A last.pt, loaded onto the CPU whatever the training device: RNG and generator states must be CPU
    ByteTensors, and load_state_dict copies every other tensor to where its module or optimizer keeps it."""
    payload = checkpoint.load_checkpoint(path)
    if payload.get("kind") != "last":
        raise CheckpointError(
            f"{path} is a '{payload.get('kind')}' checkpoint without optimizer state; resume from last.pt"
        )
    return upgrade_last(payload, path)


class Checkpointer:
    def __init__(self, run_dir: Path, dist: DistContext, identity: Callable[[], dict], enabled: bool = True):
        self.folder = Path(run_dir) / "checkpoints"
        self.dist = dist
        self.enabled = enabled  # trainer.enable_checkpointing: quick checks keep no weights
        self.identity = identity  # config, model name, classes, normalisation: what evaluate needs

    def save_best(self, model: torch.nn.Module, epoch: int, record: dict) -> None:
        if self.dist.is_main and self.enabled:
            checkpoint.save_checkpoint(self.folder / "best.pt", {
                "kind": "best", **self.identity(), "model": model.state_dict(), "epoch": epoch, "metrics": record,
            })

    def save_last(self, parts: Mapping, rank_parts: Mapping, callbacks: Mapping, epoch: int) -> None:
        # Each rank has its own data position and RNG streams; rank 0 saves them all in one file.
        if not self.enabled:
            return
        ranks = distributed.all_gather_objects({name: part.state_dict() for name, part in rank_parts.items()})
        if not self.dist.is_main:
            return
        checkpoint.save_checkpoint(self.folder / "last.pt", {
            "kind": "last",
            "layout": LAST_LAYOUT,
            **self.identity(),
            "epoch": epoch,  # for people and `evaluate`; the training state holds the rest
            **{name: part.state_dict() for name, part in parts.items()},
            "callbacks": {name: cb.state_dict() for name, cb in callbacks.items()},
            "world_size": self.dist.world_size,
            "ranks": ranks,
        })

    def load_last(self, payload: dict, path: Path, parts: Mapping, rank_parts: Mapping, callbacks: Mapping, *,
                  num_classes: int, model_name: str, skip: tuple[str, ...] = ()) -> None:
        """Restore every part from a payload of read_last(); the parts named in `skip` keep their fresh state."""
        saved_arch, saved_classes = payload.get("model_name"), payload.get("num_classes")
        if saved_classes is not None and saved_classes != num_classes:
            raise CheckpointError(
                f"{path} holds a {saved_arch} for {saved_classes} classes, but this run builds a {model_name} for "
                f"{num_classes} classes; resume with the dataset it was trained on, or start a new run directory "
                "(another hydra.run.dir) for this one"
            )
        saved_callbacks, ours = sorted(payload["callbacks"]), sorted(callbacks)
        if saved_callbacks != ours:
            raise CheckpointError(
                f"{path} was saved with the stateful callbacks [{', '.join(saved_callbacks)}] and this run has "
                f"[{', '.join(ours)}]; resume with the same callbacks (e.g. +callbacks=ema)"
            )
        if payload["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"{path} was saved by {payload['world_size']} process(es) and this run has {self.dist.world_size}; "
                "resume with the same number of processes (torchrun --nproc_per_node)"
            )
        for name, part in parts.items():
            if name in skip:
                continue
            if isinstance(part, CheckedModel):
                part.load_state_dict(payload[name], saved_arch=saved_arch, source=str(path))
            else:
                part.load_state_dict(payload[name])
        for name, cb in callbacks.items():
            cb.load_state_dict(payload["callbacks"][name])
        mine = payload["ranks"][self.dist.rank]
        for name, part in rank_parts.items():
            part.load_state_dict(mine[name])
