"""Build the train/val/test loaders a config asks for: the per-sample DataLoader or the on-device batched path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from cifarbench.data.augment import build_ops, torchvision_pipeline
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.splits import ImageSplits
from cifarbench.data.torch_loader import TorchLoader
from cifarbench.device import pin_memory_available


@dataclass
class Loaders:
    train: DeviceLoader | TorchLoader
    val: DeviceLoader | TorchLoader | None
    test: DeviceLoader | TorchLoader


def build_loaders(cfg: DictConfig, data: ImageSplits, device: torch.device, rank: int = 0, world_size: int = 1):
    """Training batches are augmented with the `augment` node's ops; evaluation batches are only normalised."""
    t, d = cfg.trainer, cfg.dataset
    ops = build_ops(cfg.get("augment"))
    common = dict(device=device, channels_last=bool(t.channels_last), seed=int(t.seed))

    def make(split, train: bool):
        if split is None:
            return None
        # Training is sharded by rank; evaluation runs whole on rank 0, so no sample is padded in or counted twice.
        common.update(rank=rank if train else 0, world_size=world_size if train else 1)
        batch_size = int(t.batch_size if train else t.eval_batch_size)
        split_ops = ops if train else []
        if d.loader == "device":
            return DeviceLoader(split, batch_size, mean=data.mean, std=data.std, ops=split_ops, shuffle=train,
                                drop_last=train, **common)
        return TorchLoader(split, torchvision_pipeline(split_ops, data.mean, data.std), batch_size, shuffle=train,
                           drop_last=train, num_workers=int(d.num_workers), pin_memory=pin_memory_available(device),
                           persistent_workers=bool(d.persistent_workers) and train, **common)

    return Loaders(train=make(data.train, True), val=make(data.val, False), test=make(data.test, False))
