"""The train/val/test loaders a config asks for: the per-sample DataLoader or the on-device batched path. (The
dataset itself is built from its config node by cifarbench.engine.setup.build_data.)"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from cifarbench.data.augment import Resize, build_ops, torchvision_pipeline
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.seeds import run_seeds
from cifarbench.data.splits import ImageSplits
from cifarbench.data.torch_loader import TorchLoader
from cifarbench.device import pin_memory_available

log = logging.getLogger("cifarbench")


@dataclass(frozen=True)
class InputSpec:
    """What a model asks of its input (cifarbench.models.timm_adapter.input_spec): every batch resized to `size`
    px with `interpolation` (None: as the data is), normalised with (mean, std) (None: the dataset's)."""
    size: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass
class Loaders:
    train: DeviceLoader | TorchLoader | None
    val: DeviceLoader | TorchLoader | None
    test: DeviceLoader | TorchLoader

    def close(self) -> None:
        """Release what outlives an epoch (the DataLoader's persistent workers); the device loader holds none."""
        for loader in (self.train, self.val, self.test):
            if hasattr(loader, "close"):
                loader.close()


def build_loaders(cfg: DictConfig, data: ImageSplits, device: torch.device, rank: int = 0, world_size: int = 1,
                  splits: tuple[str, ...] = ("train", "val", "test"), model_input: InputSpec | None = None) -> Loaders:
    """Training batches are augmented with the `augment` node's ops; evaluation batches are only normalised. A
    `model_input` (a pretrained model's) resizes every batch and replaces the dataset's statistics.

    Only the loaders named in `splits` are built (the device loader copies its split to the device).
    """
    t, d = cfg.trainer, cfg.dataset
    ops = build_ops(cfg.get("augment"))
    model_input = model_input or InputSpec()
    mean, std = model_input.mean or data.mean, model_input.std or data.std
    resize = None
    if model_input.size is not None and model_input.size != int(d.image_size):
        resize = Resize(model_input.size, model_input.interpolation)
        if "train" in splits:
            log.info("the model takes %d px images: each batch is resized from %d px on %s (%s)", model_input.size,
                     int(d.image_size), device, model_input.interpolation)
    kind = str(d.loader)
    if kind == "auto":
        kind, why = data.preferred_loader or ("device", "the dataset is held in memory")
        if "train" in splits:
            log.info("dataset.loader=auto: the %s loader, since %s", kind, why)
    seeds = run_seeds(t)
    common = dict(device=device, channels_last=bool(t.channels_last), seed=seeds.data, augment_seed=seeds.augment)

    def make(name: str, split):
        train = name == "train"
        if split is None or name not in splits:
            return None
        # Training is sharded by rank; evaluation runs whole on rank 0, so no sample is padded in or counted twice.
        common.update(rank=rank if train else 0, world_size=world_size if train else 1)
        batch_size = int(t.batch_size if train else t.eval_batch_size)
        split_ops = ops if train else []
        if kind == "device":
            return DeviceLoader(split, batch_size, mean=mean, std=std, ops=split_ops, shuffle=train,
                                drop_last=train, resize=resize, **common)
        return TorchLoader(split, torchvision_pipeline(split_ops, mean, std, resize), batch_size, shuffle=train,
                           drop_last=train, num_workers=int(d.num_workers), pin_memory=pin_memory_available(device),
                           persistent_workers=bool(d.persistent_workers) and train, **common)

    return Loaders(train=make("train", data.train), val=make("val", data.val), test=make("test", data.test))
