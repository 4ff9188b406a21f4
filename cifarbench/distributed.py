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

from cifarbench.errors import ConfigError


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


def backend() -> str:
    """gloo for CPU tensors, plus nccl for CUDA tensors where CUDA exists.

    The group is joined before the config says which device the run will use (the run stamp is shared first), so
    it gets a backend per device type: a `trainer.device=cpu` run on a GPU box sends its CPU tensors to gloo, and
    object collectives and barriers always go through gloo.
    """
    if torch.cuda.is_available() and os.environ.get("CIFARBENCH_DIST_BACKEND") != "gloo":
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_process_group() -> DistContext:
    """Join the process group torchrun describes; idempotent. No GPU is selected here: see `process_device`."""
    if not launched_by_torchrun():
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend())
    return DistContext(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())


def process_device(ctx: DistContext, requested: str) -> str:
    """Under torchrun each process drives the GPU of its local rank; 'auto' and 'cuda' mean that one."""
    requested = str(requested).lower()
    if not ctx.enabled:
        return requested
    if requested.startswith("cuda:"):
        raise ConfigError(
            f"trainer.device={requested} under torchrun would put every rank on the same GPU; use "
            "trainer.device=cuda (each rank takes the GPU of its LOCAL_RANK) and choose the GPUs with "
            "CUDA_VISIBLE_DEVICES"
        )
    wants_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return requested
    count = torch.cuda.device_count()
    if count == 0:  # no CUDA here at all: resolve_device says so, naming trainer.device
        return requested
    if ctx.local_rank >= count:
        raise ConfigError(
            f"torchrun started more processes on this node than it has GPUs (local rank {ctx.local_rank}, "
            f"{count} GPU(s) visible); use --nproc_per_node={count}, or trainer.device=cpu"
        )
    torch.cuda.set_device(ctx.local_rank)
    return f"cuda:{ctx.local_rank}"


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


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Each tensor set in place to rank `src`'s value (a module's state_dict().values(): its parameters and
    buffers)."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.broadcast(tensor, src=src)


def average_gradients(parameters) -> None:
    """Each parameter's .grad set to its mean over the ranks, in one all-reduce, as DDP averages them (for a model that
    DDP does not wrap). Every rank must call it with the same parameters having a gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


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
