"""What a run sets up once per process, before anything is built: the process group, the device, threads and
backend flags, the seeds; and the RNG states that a resume must restore."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cifarbench import distributed
from cifarbench.data.seeds import run_seeds
from cifarbench.device import (
    check_device_precision,
    configure_backends,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
    rng_states,
    set_rng_states,
)
from cifarbench.distributed import DistContext
from cifarbench.fileio import ensure_writable

log = logging.getLogger("cifarbench")


@dataclass(frozen=True)
class Runtime:
    dist: DistContext
    device: torch.device
    precision: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_runtime(trainer_cfg: DictConfig, run_dir: Path) -> Runtime:
    t = trainer_cfg
    dist = distributed.init_process_group()
    if dist.is_main:
        # Fail now, not at the first checkpoint an hour into training.
        ensure_writable(Path(run_dir) / "checkpoints", "hydra.run.dir")
    device = resolve_device(distributed.process_device(dist, t.device))
    precision, why = resolve_precision(device, t.precision)
    check_device_precision(device, precision)
    if str(t.precision) == "auto":
        log.info("precision %s on %s (%s)", precision, device, why)
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    configure_backends(device, bool(t.deterministic))
    if device.type == "cpu" and keep_freed_memory(bool(t.get("keep_freed_memory", True))):
        log.info("CPU allocator: freed memory stays in the process (trainer.keep_freed_memory=false to turn off)")
    # Rank 0 starts from the single-process seed; DDP copies its initial weights to the other ranks.
    seed_everything(run_seeds(t).init + dist.rank)
    return Runtime(dist=dist, device=device, precision=precision)


class RngStates:
    """Every random stream of one process (torch CPU and device, Python, NumPy, and named generators such as the
    mixing one), as one stateful part of the checkpoint. Plain containers and CPU tensors only, so the state loads
    under torch.load(weights_only=True)."""

    def __init__(self, device: torch.device, generators: dict[str, torch.Generator]):
        self.device = device
        self.generators = generators

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": rng_states(self.device),
            **{name: generator.get_state() for name, generator in self.generators.items()},
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        }

    def load_state_dict(self, state: dict) -> None:
        set_rng_states(state["torch"], self.device)
        for name, generator in self.generators.items():
            generator.set_state(state[name])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
