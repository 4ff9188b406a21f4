"""The training loop. Read it top to bottom: build, fit (train an epoch, evaluate, log, checkpoint), test."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omegaconf import DictConfig, OmegaConf

from cifarbench import checkpoint
from cifarbench.config import build, validate
from cifarbench.data.loaders import build_loaders
from cifarbench.data.splits import ImageSplits, hold_out_validation
from cifarbench.device import (
    autocast,
    configure_backends,
    grad_scaler,
    memory_format,
    resolve_device,
    rng_states,
    set_rng_states,
    synchronize,
)
from cifarbench.errors import CheckpointError, ConfigError, DataError
from cifarbench.metrics import evaluate
from cifarbench.model_stats import count_parameters, forward_gflops
from cifarbench.run_log import RunLog

log = logging.getLogger("cifarbench")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_data(dataset_cfg: DictConfig, seed: int) -> ImageSplits:
    splits: ImageSplits = build(dataset_cfg.source)
    if splits.num_classes != dataset_cfg.num_classes:
        raise ConfigError(
            f"dataset.num_classes={dataset_cfg.num_classes} but the {dataset_cfg.name} data hold "
            f"{splits.num_classes} classes; set dataset.num_classes={splits.num_classes}"
        )
    if splits.in_channels != dataset_cfg.in_channels:
        raise ConfigError(
            f"dataset.in_channels={dataset_cfg.in_channels} but the images have {splits.in_channels} channels"
        )
    splits.train, splits.val = hold_out_validation(splits.train, dataset_cfg.val_size, seed, dataset_cfg.val_split)
    return splits


def check_batch_fits(data: ImageSplits, batch_size: int, world_size: int = 1) -> None:
    # Training drops the last incomplete batch, so a set smaller than one global batch would train on nothing.
    if len(data.train) < batch_size * world_size:
        raise ConfigError(
            f"trainer.batch_size={batch_size} (x {world_size} processes) is larger than the {len(data.train)} training "
            "images; lower trainer.batch_size"
        )


def python_rng_state() -> dict:
    # Plain containers only, so the state loads under torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def set_python_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, run_info: dict | None = None):
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_info = run_info or {}
        t = cfg.trainer
        self.device = resolve_device(t.device)
        self.precision = str(t.precision)
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        configure_backends(self.device, bool(t.deterministic))
        seed_everything(int(t.seed))

        self.data = build_data(cfg.dataset, int(t.seed))
        check_batch_fits(self.data, int(t.batch_size))
        self.loaders = build_loaders(cfg, self.data, self.device)
        self.num_classes = self.data.num_classes

        self.model = build(cfg.model).to(self.device, memory_format=memory_format(t.channels_last))
        self.params = count_parameters(self.model)
        self.gflops = forward_gflops(self.model, tuple(self.data.train.images.shape[1:]), self.device)
        # Checkpoints always hold the plain module's weights; compiling only wraps it for the training steps.
        self.train_model = torch.compile(self.model) if t.compile else self.model
        self.optimizer = build(cfg.optimizer)(self.model.parameters())
        self.scheduler = build(cfg.scheduler)(
            self.optimizer, steps_per_epoch=len(self.loaders.train), epochs=int(t.epochs)
        )
        self.scaler = grad_scaler(self.device, self.precision)

        self.epoch = 0
        self.global_step = 0
        self.train_time = 0.0
        self.train_samples = 0
        self.best: dict = {}
        self.history: list[dict] = []
        self.monitor = "val/acc" if self.data.val is not None else "test/acc"
        resume_path = self._resume_path(t.resume)
        if resume_path is not None:
            self._load_last(resume_path)
        self.log = RunLog(
            self.run_dir, progress_bar=bool(t.progress_bar), purge_step=self.epoch + 1 if resume_path else None
        )

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        t = self.cfg.trainer
        log.info(
            "%s: %.2fM parameters, %.3f GFLOPs/image, %d train / %s val / %d test images on %s, monitoring %s",
            self.model_name, self.params / 1e6, self.gflops, len(self.data.train),
            len(self.data.val) if self.data.val is not None else "no", len(self.data.test), self.device,
            self.monitor,
        )
        started = time.perf_counter()
        epochs = self.log.bar(total=int(t.epochs), initial=self.epoch, desc="epochs", position=0, leave=True)
        while self.epoch < int(t.epochs):
            self.epoch += 1
            record = {"epoch": self.epoch, **self.train_epoch()}
            monitored = self.evaluate_split(self.monitor.split("/")[0])
            record.update({f"{self.monitor.split('/')[0]}/{k}": monitored[k] for k in ("loss", "acc", "top5")})
            self.history.append(record)
            self.log.scalars({k: v for k, v in record.items() if k != "epoch"}, self.epoch)
            self._update_best(record)
            if self.epoch % int(t.checkpoint_every_n_epochs) == 0 or self.epoch == int(t.epochs):
                self._save_last()
            self._write_metrics(status="running", wall_time=time.perf_counter() - started)
            epochs.update(1)
            epochs.set_postfix({self.monitor: f"{record[self.monitor]:.4f}"})
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f  %s %.4f  lr %.4g  %.0f img/s",
                self.epoch, int(t.epochs), record["train/loss"], record["train/acc"], self.monitor,
                record[self.monitor], record["lr"], record["throughput/img_per_s"],
            )
        epochs.close()
        test = self.test_best()
        result = self._write_metrics(status="completed", wall_time=time.perf_counter() - started, test=test)
        self.log.close()
        return result

    def train_epoch(self) -> dict:
        t = self.cfg.trainer
        loader = self.loaders.train
        loader.set_epoch(self.epoch)
        self.train_model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        lr = self.optimizer.param_groups[0]["lr"]
        bar = self.log.bar(loader, total=len(loader), desc=f"epoch {self.epoch}", position=1)
        synchronize(self.device)
        started = time.perf_counter()
        for step, (images, labels) in enumerate(bar, start=1):
            with autocast(self.device, self.precision):
                logits = self.train_model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=float(t.label_smoothing))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t.grad_clip_norm))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            # Reading a device value waits for the GPU, so the loss is only looked at every few steps.
            if step % int(t.log_every_n_steps) == 0 or step == len(loader):
                running_loss = float(loss_sum) / seen
                self._check_finite(running_loss, step)
                bar.set_postfix(loss=f"{running_loss:.4f}", acc=f"{int(correct) / seen:.4f}", lr=f"{lr:.4g}",
                                img_s=f"{seen / (time.perf_counter() - started):.0f}")
            lr = self.optimizer.param_groups[0]["lr"]
        synchronize(self.device)
        elapsed = time.perf_counter() - started
        bar.close()
        self.train_time += elapsed
        self.train_samples += seen
        return {
            "train/loss": float(loss_sum) / seen,
            "train/acc": int(correct) / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time/epoch_s": elapsed,
            "throughput/img_per_s": seen / elapsed,
        }

    def _check_finite(self, running_loss: float, step: int) -> None:
        if not math.isfinite(running_loss):
            raise NonFiniteLossError(
                f"the training loss became {running_loss} in epoch {self.epoch} by step {step}; lower optimizer.lr, "
                "set trainer.grad_clip_norm, or use trainer.precision=32"
            )

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None) -> dict:
        return evaluate(
            model or self.model, getattr(self.loaders, split), num_classes=self.num_classes, device=self.device,
            precision=self.precision,
        )

    # ------------------------------------------------------------------------------------------- best / test
    def _update_best(self, record: dict) -> None:
        value = record[self.monitor]
        if not math.isfinite(value) or (self.best and value <= self.best[self.monitor]):
            return
        self.best = dict(record)
        checkpoint.save_checkpoint(self.run_dir / "checkpoints" / "best.pt", {
            "kind": "best",
            **self._identity(),
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "metrics": record,
        })

    def test_best(self) -> dict:
        """Evaluate the test set once, on the best model (the last one if none was ever finite)."""
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            self.model.load_state_dict(checkpoint.load_checkpoint(best_path, self.device)["model"])
        else:
            log.warning("no epoch produced a finite %s; testing the final weights", self.monitor)
        test = self.evaluate_split("test")
        log.info("test (best model, epoch %s): loss %.4f acc %.4f top5 %.4f",
                 self.best.get("epoch"), test["loss"], test["acc"], test["top5"])
        return test

    # ------------------------------------------------------------------------------------ checkpoints & state
    @property
    def model_name(self) -> str:
        return self.run_info.get("choices", {}).get("model") or self.cfg.model._target_.rsplit(".", 1)[-1]

    def _identity(self) -> dict:
        return {
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "model_name": self.model_name,
            "num_classes": self.num_classes,
            "in_channels": self.data.in_channels,
            "classes": list(self.data.classes),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
        }

    def _save_last(self) -> None:
        checkpoint.save_checkpoint(self.run_dir / "checkpoints" / "last.pt", {
            "kind": "last",
            **self._identity(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "best": self.best,
            "history": self.history,
            "loader": self.loaders.train.state_dict(),
            "rng": {"torch": rng_states(self.device), **python_rng_state()},
        })

    def _resume_path(self, resume) -> Path | None:
        if resume in (None, "", False):
            return None
        if str(resume) == "auto":
            path = self.run_dir / "checkpoints" / "last.pt"
            if not path.is_file():
                log.info("trainer.resume=auto: no %s yet, starting a fresh run", path)
                return None
            return path
        path = Path(str(resume)).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"trainer.resume={resume}: no such file; give a last.pt path or trainer.resume=auto"
            )
        return path

    def _load_last(self, path: Path) -> None:
        state = checkpoint.load_checkpoint(path, self.device)
        if state.get("kind") != "last":
            raise CheckpointError(
                f"{path} is a '{state.get('kind')}' checkpoint without optimizer state; resume from last.pt"
            )
        checkpoint.load_model_weights(self.model, state["model"], source=str(path), expected_arch=self.model_name)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loaders.train.load_state_dict(state["loader"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.train_time = float(state["train_time"])
        self.train_samples = int(state["train_samples"])
        self.best = state["best"]
        self.history = state["history"]
        set_rng_states(state["rng"]["torch"], self.device)
        set_python_rng_state(state["rng"])
        log.info("resumed from %s at the end of epoch %d", path, self.epoch)

    def _write_metrics(self, *, status: str, wall_time: float, test: dict | None = None, error: str | None = None):
        final = self.history[-1] if self.history else {}
        payload = {
            "status": status,
            "error": error,
            "model": self.model_name,
            "dataset": self.cfg.dataset.name,
            "overrides": self.run_info.get("overrides", []),
            "choices": self.run_info.get("choices", {}),
            "params": self.params,
            "gflops": self.gflops,
            "epochs": self.epoch,
            "epochs_planned": int(self.cfg.trainer.epochs),
            "monitor": self.monitor,
            "best": self.best,
            "final": final,
            "test": {k: test[k] for k in ("loss", "acc", "top5")} if test else None,
            "per_class_acc": dict(zip(self.data.classes, test["per_class_acc"])) if test else None,
            "wall_time_s": wall_time,
            "img_per_s": self.train_samples / self.train_time if self.train_time else None,
            "device": str(self.device),
            "history": self.history,
        }
        self.log.write_metrics(payload)
        return payload


__all__ = ["Trainer", "NonFiniteLossError", "build_data", "DataError"]
