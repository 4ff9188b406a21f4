"""The only module that knows about torchrun: process-group setup, rank helpers and collective reductions.

torchrun (or srun + torchrun) starts one process per device and exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT; the process group is initialised from those (env://). Without them everything here is a no-op
for a single process, so the trainer calls these helpers unconditionally.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group() -> DistContext:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU); idempotent."""
    if not launched_by_torchrun():
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and os.environ.get("CIFARBENCH_DIST_BACKEND") != "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())


def process_device(ctx: DistContext, requested: str) -> str:
    """Each process drives the GPU of its local rank; 'auto' and 'cuda' mean that one."""
    if ctx.enabled and str(requested) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return str(requested)


def share_run_stamp() -> None:
    """Make every rank compose the same run directory.

    Each torchrun process runs Hydra itself, and `${now:...}` read a second apart would give each rank its own
    output directory. Rank 0's timestamp is broadcast before Hydra starts and read by conf/hydra/default.yaml
    through CIFARBENCH_RUN_STAMP.
    """
    if not launched_by_torchrun() or "CIFARBENCH_RUN_STAMP" in os.environ:
        return
    init_process_group()
    stamp = [time.strftime("%Y-%m-%d/%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    os.environ["CIFARBENCH_RUN_STAMP"] = stamp[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
