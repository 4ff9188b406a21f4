"""Everything a run builds from its config, in the order the trainer needs it: data and loaders, the model and its
training wrappers (SyncBatchNorm, DDP, compile), the optimizer, schedule and grad scaler, the loss and mixing."""

from __future__ import annotations

import logging
import math

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from cifarbench import distributed
from cifarbench.checkpoint.io import without_pretrained
from cifarbench.config import build
from cifarbench.data.loaders import Loaders, build_loaders
from cifarbench.data.seeds import run_seeds
from cifarbench.data.splits import ImageSplits, check_folds, hold_out_validation
from cifarbench.device import grad_scaler, memory_format
from cifarbench.distributed import DistContext
from cifarbench.engine.runtime import Runtime
from cifarbench.errors import ConfigError
from cifarbench.losses.base import Loss
from cifarbench.models.layers import InitializedFromData
from cifarbench.models.timm_adapter import input_spec
from cifarbench.optim.optimizer_sets import OptimizerSet, SchedulerSet
from cifarbench.optim.param_groups import MAIN, build_param_groups
from cifarbench.optim.sam import biases

log = logging.getLogger("cifarbench")


def build_data(dataset_cfg: DictConfig, seed: int, dist: DistContext | None = None) -> ImageSplits:
    """The dataset the config names, checked against its declared shape, with the validation split carved out.

    Under torchrun, local rank 0 prepares (downloads, extracts) the data while the node's other ranks wait at a
    barrier, then they read what it left; jobs that are not ranks of one run are kept apart by the dataset's own
    file lock (see cifarbench.data.cifar).
    """
    dist = dist or DistContext()
    if dist.enabled and dist.local_rank != 0:
        distributed.barrier()
    splits: ImageSplits = build(dataset_cfg.source)
    if dist.enabled and dist.local_rank == 0:
        distributed.barrier()
    if splits.num_classes != dataset_cfg.num_classes:
        raise ConfigError(
            f"dataset.num_classes={dataset_cfg.num_classes} but the {dataset_cfg.name} data hold "
            f"{splits.num_classes} classes; set dataset.num_classes={splits.num_classes}"
        )
    if splits.in_channels != dataset_cfg.in_channels:
        raise ConfigError(
            f"dataset.in_channels={dataset_cfg.in_channels} but the images have {splits.in_channels} channels"
        )
    # The split depends on dataset.split_seed only (a config from before it: the run's seed, as then), so every
    # model and every training seed of a comparison holds out the same images.
    split_seed = int(dataset_cfg.get("split_seed", seed))
    folds = check_folds(dataset_cfg.get("folds"), dataset_cfg.get("fold", 0))
    splits.train, splits.val = hold_out_validation(splits.train, dataset_cfg.val_size, split_seed,
                                                   dataset_cfg.val_split, folds)
    return splits



def build_training_data(cfg: DictConfig, rt: Runtime) -> tuple[ImageSplits, Loaders]:
    """Each rank trains on its shard of every epoch; the global batch is batch_size x world_size."""
    t = cfg.trainer
    data = build_data(cfg.dataset, int(t.seed), rt.dist)
    model_input = input_spec(cfg.model)
    if model_input is not None and model_input.mean is not None:
        # The pretrained weights' statistics, which the checkpoints then record as the run's normalisation.
        data.mean, data.std = model_input.mean, model_input.std
    if int(t.get("overfit_batches") or 0) > 0:
        # The same few images every epoch, monitored on themselves: a model that can't fit them has a bug.
        count = min(int(t.overfit_batches) * int(t.batch_size) * rt.dist.world_size, len(data.train))
        data.train = data.train.subset(torch.arange(count))
        data.val = data.train
        log.info("trainer.overfit_batches=%d: training and validating on the same %d images", t.overfit_batches,
                 count)
    # Training drops the last incomplete batch, so a set smaller than one global batch would train on nothing.
    if len(data.train) < int(t.batch_size) * rt.dist.world_size:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} (x {rt.dist.world_size} processes) is larger than the "
            f"{len(data.train)} training images; lower trainer.batch_size"
        )
    return data, build_loaders(cfg, data, rt.device, rt.dist.rank, rt.dist.world_size, model_input=model_input)


def model_input_shape(cfg: DictConfig, data: ImageSplits) -> tuple[int, ...]:
    """(C, H, W) of what the model sees: the images' own size, or the size its loaders resize them to."""
    channels, *size = data.train.images.shape[1:]
    model_input = input_spec(cfg.model)
    if model_input is not None and model_input.size is not None:
        size = [model_input.size, model_input.size]
    return (int(channels), *map(int, size))


def model_name(cfg: DictConfig, choices: dict) -> str:
    """The conf/model choice (resnet20), or without Hydra's choices the builder's name and depth."""
    if str(cfg.model._target_).endswith("timm_adapter.timm_model"):
        return f"timm:{cfg.model.name}"  # model=timm names its architecture in model.name
    builder = cfg.model._target_.rsplit(".", 1)[-1].removeprefix("cifar_")
    return choices.get("model") or f"{builder}{cfg.model.get('depth') or ''}"


def build_model(cfg: DictConfig, rt: Runtime, resuming: bool = False):
    """(model, ddp, train_model): checkpoints always hold the plain module's weights; DDP and compile only wrap it
    for the training steps. A resumed run's weights come from its last.pt, so pretrained ones are not fetched."""
    t = cfg.trainer
    model = build(without_pretrained(cfg.model) if resuming else cfg.model)
    if rt.dist.enabled and t.sync_batchnorm:
        if rt.device.type != "cuda":
            raise ConfigError(f"trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs "
                              f"only) and this run trains on {rt.device.type}; drop trainer.sync_batchnorm")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(rt.device, memory_format=memory_format(t.channels_last))
    return (model, *wrap_for_training(model, cfg, rt))


def wrap_for_training(model: torch.nn.Module, cfg: DictConfig, rt: Runtime):
    """(ddp or None, train_model). DDP registers the parameters that train when it is built and expects a gradient
    for each of them every step, so a run whose set of trainable parameters changes (a param_groups training
    window closing, a callback freezing a stem) wraps the model again: see `TrainStep.trainable_changed`."""
    ddp = None
    if rt.dist.enabled:
        ddp = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    wrapped = ddp or model
    return ddp, torch.compile(wrapped) if cfg.trainer.compile else wrapped


def init_weights_from(model: torch.nn.Module, path: str, model_name: str) -> None:
    """trainer.init_from: a fresh run starts from the weights of a best.pt or last.pt (fine-tuning, warm starts);
    the optimizer, schedule and counters start fresh."""
    from pathlib import Path

    from cifarbench.checkpoint import load_checkpoint, load_model_weights
    from cifarbench.errors import CheckpointError

    if not Path(path).expanduser().is_file():
        raise CheckpointError(f"trainer.init_from={path}: no such file; give a run's checkpoints/best.pt or last.pt")
    payload = load_checkpoint(Path(path).expanduser())
    try:
        load_model_weights(model, payload["model"], source=path, expected_arch=model_name,
                           saved_arch=payload.get("model_name"))
    except CheckpointError as error:
        raise CheckpointError(
            f"trainer.init_from: {error}. init_from loads every weight, so the model and its number of classes "
            "must match the checkpoint's"
        ) from None
    log.info("initial weights from %s (%s, epoch %s)", path, payload.get("model_name"), payload.get("epoch"))


def train_batches(cfg: DictConfig, loader) -> int:
    """Micro-batches per epoch: the loader's, or fewer with trainer.limit_train_batches."""
    limit = cfg.trainer.get("limit_train_batches")
    return min(len(loader), int(limit)) if limit else len(loader)


def init_from_data(model: torch.nn.Module, data: ImageSplits, device: torch.device) -> None:
    """A model that is InitializedFromData (airbench's whitening conv) gets its first `data_init_samples`
    normalised training images once, on a fresh start; a resume restores the result instead."""
    if not isinstance(model, InitializedFromData):
        return
    from cifarbench.data.augment import normalize

    count = min(int(getattr(model, "data_init_samples", 5000)), len(data.train))
    model.init_from_data(normalize(data.train.images[:count].to(device), data.mean, data.std))
    log.info("%s initialised from %d training images", type(model).__name__, count)


def global_batch(cfg: DictConfig, rt: Runtime) -> int:
    return int(cfg.trainer.batch_size) * int(cfg.trainer.accumulate_steps) * rt.dist.world_size


def scaled_lr(cfg: DictConfig, batch: int) -> dict:
    """The linear scaling rule (Goyal et al. 2017): lr grows with the global batch over a reference batch."""
    t = cfg.trainer
    if t.lr_scaling in (None, "none"):
        return {}
    if t.lr_scaling != "linear":
        raise ConfigError(f"trainer.lr_scaling={t.lr_scaling!r} is not supported; use none or linear")
    lr = float(cfg.optimizer.lr) * batch / int(t.lr_base_batch)
    log.info("linear lr scaling: lr %g x %d / %d = %g", cfg.optimizer.lr, batch, t.lr_base_batch, lr)
    return {"lr": lr}


def build_optimization(cfg: DictConfig, model: torch.nn.Module, rt: Runtime, micro_batches_per_epoch: int):
    """(optimizer, scheduler, scaler); the schedule counts optimizer steps, not micro-batches. With `optimizers`
    entries, an OptimizerSet and a SchedulerSet (cifarbench.optim.optimizer_sets)."""
    t = cfg.trainer
    lr = scaled_lr(cfg, global_batch(cfg, rt))
    steps_per_epoch = math.ceil(micro_batches_per_epoch / int(t.accumulate_steps))
    scaler = grad_scaler(rt.device, rt.precision)
    extras = cfg.get("optimizers") or {}
    if not cfg.get("param_groups") and not extras:
        optimizer = build(cfg.optimizer)(model.parameters(), **lr)
        scheduler = build(cfg.scheduler)(optimizer, steps_per_epoch=steps_per_epoch, epochs=float(t.epochs))
        return sharpness_aware(cfg, optimizer, model), scheduler, scaler
    groups = build_param_groups(
        model, OmegaConf.to_container(cfg.param_groups, resolve=True),
        lr=lr.get("lr", float(cfg.optimizer.lr)), weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
        optimizers={name: (float(entry.optimizer.lr), float(entry.optimizer.get("weight_decay", 0.0)))
                    for name, entry in extras.items()})
    for group in groups:
        log.info("param group %s (%s): %d tensors, lr %.4g, weight decay %.4g%s%s", group["name"], group["optimizer"],
                 len(group["params"]), group["lr"], group["weight_decay"],
                 f", trains in epochs 1-{group['train_epochs']}" if group["train_epochs"] is not None else
                 f", frozen in epochs 1-{group['frozen_epochs']}" if group.get("frozen_epochs") is not None else "",
                 f", schedule over {group['schedule_epochs']} epochs" if group["schedule_epochs"] is not None else "")
    optimizers, schedulers = {}, {}
    for name, entry in {MAIN: None, **extras}.items():
        mine = [group for group in groups if group["optimizer"] == name]
        if not mine and name == MAIN:
            continue  # every parameter went to another optimizer
        if not mine:
            raise ConfigError(f"optimizers.{name} steps no parameter; give it some with a param_groups rule "
                              f"(optimizer: {name})")
        optimizer = build(cfg.optimizer)(mine, **lr) if entry is None else build(entry.optimizer)(mine)
        schedule = cfg.scheduler if entry is None or entry.get("scheduler") is None else entry.scheduler
        optimizers[name] = optimizer
        schedulers[name] = build(schedule)(optimizer, steps_per_epoch=steps_per_epoch, epochs=float(t.epochs))
    if not extras:
        return sharpness_aware(cfg, optimizers[MAIN], model), schedulers[MAIN], scaler
    optimizer = OptimizerSet(optimizers)
    return sharpness_aware(cfg, optimizer, model), SchedulerSet(optimizer, schedulers), scaler


def sharpness_aware(cfg: DictConfig, optimizer, model: torch.nn.Module):
    """The optimizer, wrapped in SAM when the run chooses the `sam` group (cifarbench.optim.sam). The schedules
    were built on the base optimizer, whose param groups SAM shares."""
    if not cfg.get("sam"):
        return optimizer
    sam = build(cfg.sam)(optimizer, unscaled=biases(model))
    log.info("sharpness-aware minimisation%s around %s: rho %g%s; two forward/backward passes per step",
             " (adaptive)" if sam.adaptive else "", type(optimizer).__name__, sam.rho,
             f", eta {sam.eta:g}" if sam.adaptive else "")
    return sam


def build_loss(cfg: DictConfig, rt: Runtime, num_classes: int) -> Loss:
    loss = build(cfg.loss)
    loss.setup(device=rt.device, num_classes=num_classes, channels_last=bool(cfg.trainer.channels_last))
    return loss


def build_mixing(cfg: DictConfig):
    """(mixer or None, generator): mixing draws come from a CPU generator, so choosing lam and boxes never waits for
    the GPU."""
    mixer = build(cfg.mix) if cfg.get("mix") else None
    return mixer, torch.Generator().manual_seed(run_seeds(cfg.trainer).augment)
