"""The training loop. Read it top to bottom: build, fit (train an epoch, evaluate, log, checkpoint), test."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from cifarbench import checkpoint, distributed
from cifarbench.config import build, validate
from cifarbench.data.loaders import build_data, build_loaders
from cifarbench.data.mixing import mixed_accuracy_counts
from cifarbench.data.splits import ImageSplits
from cifarbench.device import (
    autocast,
    check_device_precision,
    configure_backends,
    grad_scaler,
    memory_format,
    resolve_device,
    rng_states,
    set_rng_states,
    synchronize,
)
from cifarbench.errors import CheckpointError, CifarbenchError, ConfigError
from cifarbench.fileio import ensure_writable
from cifarbench.metrics import evaluate
from cifarbench.model_stats import count_parameters, forward_gflops
from cifarbench.run_log import RunLog
from cifarbench.tensorboard_logging import (
    hparams_from_run,
    hparams_metrics,
    log_config_text,
    log_confusion_matrix,
    log_hparams,
    log_image_grid,
)
from cifarbench.tricks.distill import distillation_loss, frozen_teacher, teacher_logits
from cifarbench.tricks.ema import ModelEma
from cifarbench.tricks.swa import SwaState
from cifarbench.tricks.tta import tta_predictor

log = logging.getLogger("cifarbench")


class NonFiniteLossError(CifarbenchError, RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGUSR1 stopped the run after a step; last.pt holds everything needed to continue."""


# ------------------------------------------------------------------------------------------------- building
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_batch_fits(data: ImageSplits, batch_size: int, world_size: int = 1) -> None:
    # Training drops the last incomplete batch, so a set smaller than one global batch would train on nothing.
    if len(data.train) < batch_size * world_size:
        raise ConfigError(
            f"trainer.batch_size={batch_size} (x {world_size} processes) is larger than the {len(data.train)} training "
            "images; lower trainer.batch_size"
        )


def load_teacher(teacher_cfg: DictConfig, num_classes: int, device: torch.device,
                 channels_last: bool = False) -> torch.nn.Module | None:
    if not teacher_cfg or not teacher_cfg.get("checkpoint"):
        return None
    payload = checkpoint.load_checkpoint(teacher_cfg.checkpoint)
    if payload["num_classes"] != num_classes:
        raise ConfigError(
            f"teacher.checkpoint={teacher_cfg.checkpoint} predicts {payload['num_classes']} classes but this dataset "
            f"has {num_classes}; distil from a teacher trained on the same classes"
        )
    teacher = checkpoint.model_from_checkpoint(payload, source=str(teacher_cfg.checkpoint))
    return frozen_teacher(teacher.to(device, memory_format=memory_format(channels_last)))


def python_rng_state() -> dict:
    # Plain containers only, so the state loads under torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def set_python_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (torchrun, `kill`, SLURM at the end), SIGUSR1/SIGUSR2 (what `sbatch --signal` sends; submitit uses
    SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another) and whatever SUBMITIT_PREEMPT_SIGNAL names."""
    names = ["SIGTERM", "SIGUSR1", "SIGUSR2"]
    submitit_signal = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    if submitit_signal:
        names.append("SIG" + submitit_signal.upper().removeprefix("SIG"))
    return tuple(dict.fromkeys(getattr(signal, n) for n in names if hasattr(signal, n)))


class StopSignals:
    """A preemption signal asks for a clean stop at the next optimizer-step boundary; a second one exits at once.

    After last.pt and metrics.json are written, `hand_over()` calls the handler that was installed before ours
    (submitit's requeue handler on SLURM), so a preempted job is still requeued; with no such handler the run
    exits with EXIT_INTERRUPTED.
    """

    def __init__(self):
        self.requested: str | None = None
        self.signum: int | None = None
        self._previous: dict = {}
        self._handed_over: object = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _preemption_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        self.requested, self.signum = signal.Signals(signum).name, signum
        self._handed_over = self._previous.get(signum)
        log.warning("%s received: stopping at the next optimizer step and saving last.pt", self.requested)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """Run the earlier handler of the signal that stopped us (it may requeue and exit), once."""
        handler, self._handed_over = self._handed_over, None
        if callable(handler):
            log.info("handing %s over to the handler installed before cifarbench's", self.requested)
            handler(self.signum, None)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, run_info: dict | None = None):
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_info = run_info or {}
        t = cfg.trainer
        self.dist = distributed.init_process_group()
        if self.dist.is_main:
            # Fail now, not at the first checkpoint an hour into training.
            ensure_writable(self.run_dir / "checkpoints", "hydra.run.dir")
        self.device = resolve_device(distributed.process_device(self.dist, t.device))
        self.precision = str(t.precision)
        check_device_precision(self.device, self.precision)
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        configure_backends(self.device, bool(t.deterministic))
        # Rank 0 starts from the single-process seed; DDP copies its initial weights to the other ranks.
        seed_everything(int(t.seed) + self.dist.rank)

        # Data: each rank trains on its shard of every epoch; the global batch is batch_size x world_size.
        self.data = build_data(cfg.dataset, int(t.seed), self.dist)
        check_batch_fits(self.data, int(t.batch_size), self.dist.world_size)
        self.loaders = build_loaders(cfg, self.data, self.device, self.dist.rank, self.dist.world_size)
        self.num_classes = self.data.num_classes
        self.mixer = build(cfg.mix) if cfg.get("mix") else None
        # Mixing draws come from a CPU generator, so choosing lam and boxes never waits for the GPU.
        self.mix_generator = torch.Generator().manual_seed(int(t.seed))

        # Model, optimisation, extra models
        self.model = build(cfg.model)
        if self.dist.enabled and t.sync_batchnorm:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device, memory_format=memory_format(t.channels_last))
        self.params = count_parameters(self.model)
        self.gflops = forward_gflops(self.model, tuple(self.data.train.images.shape[1:]), self.device)
        # Checkpoints always hold the plain module's weights; DDP and compile only wrap it for the training steps.
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else None
        )
        wrapped = self.ddp or self.model
        self.train_model = torch.compile(wrapped) if t.compile else wrapped
        self.accumulate_steps = int(t.accumulate_steps)
        self.global_batch = int(t.batch_size) * self.accumulate_steps * self.dist.world_size
        self.optimizer = build(cfg.optimizer)(self.model.parameters(), **self._scaled_lr())
        self.scheduler = build(cfg.scheduler)(
            self.optimizer, steps_per_epoch=math.ceil(len(self.loaders.train) / self.accumulate_steps),
            epochs=int(t.epochs),
        )
        self.scaler = grad_scaler(self.device, self.precision)
        self.ema = ModelEma(self.model, t.ema.decay, t.ema.warmup, t.ema.update_every) if t.ema.enabled else None
        self.swa = (
            SwaState(self.model, self.optimizer, t.swa.lr, t.swa.start_epoch, t.swa.anneal_epochs,
                     t.swa.anneal_strategy)
            if t.swa.enabled else None
        )
        self.teacher = load_teacher(cfg.get("teacher"), self.num_classes, self.device, bool(t.channels_last))

        # What is monitored: validation if there is a split for it, else the test set as CIFAR papers do;
        # with EMA on, the averaged weights are the ones selected and saved as best.pt.
        split = "val" if self.data.val is not None else "test"
        self.monitor = f"{split}_ema/acc" if self.ema else f"{split}/acc"
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps of the next epoch already taken (a stop signal can save mid-epoch)
        self.epoch_sums: dict | None = None
        self.global_step = 0
        self.train_time = 0.0
        self.train_samples = 0
        self.skipped_steps = 0
        self.group_nonfinite = False  # a micro-batch of the current accumulation group had a non-finite loss
        self.best: dict = {}
        self.history: list[dict] = []
        self.swa_metrics: dict | None = None
        resume_path = self._resume_path(t.resume)
        if resume_path is not None:
            self._load_last(resume_path)
        self.stop = StopSignals()
        self.stop_vote = distributed.StopVote(self.device, self.dist.enabled, float(t.stop_check_s))
        self.log = RunLog(
            self.run_dir, progress_bar=bool(t.progress_bar),
            purge_step=max(self.epoch, 1) if t.resume not in (None, "", False) else None, enabled=self.dist.is_main,
        )
        if resume_path is not None and self.history and self.history[-1]["epoch"] == self.epoch:
            # The purge above dropped every event from this epoch on, end-of-run ones (SWA, hparams) included, so
            # that a rerun logs them once; the epoch's own scalars come back from the checkpoint's history.
            self.log.scalars({k: v for k, v in self.history[-1].items() if k != "epoch"}, self.epoch)

    def _scaled_lr(self) -> dict:
        """The linear scaling rule (Goyal et al. 2017): lr grows with the global batch over a reference batch."""
        t = self.cfg.trainer
        if t.lr_scaling in (None, "none"):
            return {}
        if t.lr_scaling != "linear":
            raise ConfigError(f"trainer.lr_scaling={t.lr_scaling!r} is not supported; use none or linear")
        lr = float(self.cfg.optimizer.lr) * self.global_batch / int(t.lr_base_batch)
        log.info("linear lr scaling: lr %g x %d / %d = %g", self.cfg.optimizer.lr, self.global_batch,
                 t.lr_base_batch, lr)
        return {"lr": lr}

    @property
    def monitor_split(self) -> str:
        return self.monitor.split("/")[0].removesuffix("_ema")

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            # Whatever ended the run, the events written so far reach the disk.
            self.log.close()

    def _fit(self) -> dict:
        t = self.cfg.trainer
        log.info(
            "%s: %.2fM parameters, %.3f GFLOPs/image, %d train / %s val / %d test images on %s, monitoring %s",
            self.model_name, self.params / 1e6, self.gflops, len(self.data.train),
            len(self.data.val) if self.data.val is not None else "no", len(self.data.test), self.device,
            self.monitor,
        )
        started = time.perf_counter()
        if self.log.writer is not None and self.epoch == 0:
            log_config_text(self.log.writer, OmegaConf.to_yaml(self.cfg, resolve=True))
        epochs = self.log.bar(total=int(t.epochs), initial=self.epoch, desc="epochs", position=0, leave=True)
        try:
            with self.stop:
                while self.epoch < int(t.epochs):
                    record = {"epoch": self.epoch + 1, **self.train_epoch()}
                    self.epoch += 1
                    if self.swa is not None:
                        self.swa.after_epoch(self.epoch)
                    record.update(self.evaluate_epoch())
                    self.history.append(record)
                    self.log.scalars({k: v for k, v in record.items() if k != "epoch"}, self.epoch)
                    self._update_best(record, self.model if self.ema is None else self.ema.module)
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
        except TrainingInterrupted as stop:
            self._write_metrics(status="interrupted", wall_time=time.perf_counter() - started, error=str(stop))
            self.log.close()
            # Everything is on disk: now the scheduler's own handler may requeue the job and exit.
            self.stop.hand_over()
            raise
        finally:
            epochs.close()
        if self.swa is not None:
            self._finish_swa()
        test = self.test_best()
        result = self._write_metrics(status="completed", wall_time=time.perf_counter() - started, test=test)
        if self.log.writer is not None:
            log_confusion_matrix(self.log.writer, test["confusion"], list(self.data.classes), step=self.epoch)
            hparams = hparams_from_run(self.cfg, self.run_info.get("overrides", []), self.run_info.get("choices", {}))
            log_hparams(self.log.writer, hparams, hparams_metrics(result), step=self.epoch)
        return result

    def train_epoch(self) -> dict:
        t = self.cfg.trainer
        loader = self.loaders.train
        loader.set_epoch(self.epoch + 1)
        self.train_model.train()
        sums = self.epoch_sums or {"loss": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0}
        # float32 and int64 accumulators: every device has them (MPS has no float64).
        loss_sum = torch.tensor(sums["loss"], dtype=torch.float32, device=self.device)
        correct = torch.tensor(sums["correct"], dtype=torch.int64, device=self.device)
        seen = sums["seen"]
        # The step of the first non-finite loss, tracked on the device so that checking it costs no sync per step.
        first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = self.log.bar(loader, total=len(loader), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}",
                           position=1)
        synchronize(self.device)
        started = time.perf_counter() - sums["elapsed"]
        for images, labels in bar:
            self.step_in_epoch += 1
            if self.log.writer is not None and self.epoch == 0 and self.step_in_epoch == 1:
                self._log_augmented_samples(images)
            loss, logits, targets = self.train_step(images, labels, len(loader))
            if loss is not None:
                loss_sum += loss.detach() * len(labels)
                correct += mixed_accuracy_counts(logits.detach(), targets)
                seen += len(labels)
                first_bad_step = torch.where(
                    (first_bad_step < 0) & ~torch.isfinite(loss.detach()), self.step_in_epoch, first_bad_step
                )
            # Reading a device value waits for the GPU, so the loss is only looked at every few steps. Ranks look
            # at the same steps and agree on what they saw, so that none of them stops alone and hangs the others.
            log_step = self.step_in_epoch % int(t.log_every_n_steps) == 0 or self.step_in_epoch == len(loader)
            if log_step:
                self._check_finite(distributed.all_reduce_max(first_bad_step.clone()))
                running = float(loss_sum) / max(seen, 1)
                bar.set_postfix(loss=f"{running:.4f}", acc=f"{int(correct) / max(seen, 1):.4f}", lr=f"{lr:.4g}",
                                img_s=f"{seen / (time.perf_counter() - started):.0f}")
            lr = self.optimizer.param_groups[0]["lr"]
            # A stop lands only between optimizer steps: gradients of a half-done accumulation group are not saved.
            at_group_end = self.step_in_epoch % self.accumulate_steps == 0 or self.step_in_epoch == len(loader)
            if at_group_end and self.stop_vote.should_stop(self.stop.requested, last=self.step_in_epoch == len(loader)):
                self.stop.requested = self.stop.requested or "a signal to another rank"
                self._check_finite(distributed.all_reduce_max(first_bad_step.clone()))
                synchronize(self.device)
                self.epoch_sums = {"loss": float(loss_sum), "correct": int(correct), "seen": seen,
                                   "elapsed": time.perf_counter() - started}
                self._save_last()
                raise TrainingInterrupted(
                    f"stopped by {self.stop.requested} in epoch {self.epoch + 1} after step {self.step_in_epoch}; "
                    "rerun the same command with trainer.resume=auto to continue"
                )
        synchronize(self.device)
        elapsed = time.perf_counter() - started
        bar.close()
        # Sums over all ranks, so the logged training metrics cover the whole epoch.
        loss_total = float(distributed.all_reduce_sum(loss_sum.clone()))
        counts = distributed.all_reduce_sum(torch.stack([correct, torch.tensor(seen, device=self.device)]))
        correct_total, seen = (int(c) for c in counts.tolist())
        self.train_time += elapsed - sums["elapsed"]
        self.train_samples += seen - sums["seen"] * self.dist.world_size
        self.step_in_epoch, self.epoch_sums = 0, None
        return {
            "train/loss": loss_total / max(seen, 1),
            "train/acc": correct_total / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time/epoch_s": elapsed,
            "throughput/img_per_s": seen / elapsed,
        }

    def _log_augmented_samples(self, images: torch.Tensor) -> None:
        """What the network is fed, normalisation undone: a quick check that the augmentations look right."""
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.data.mean, device=images.device).view(shape)
        std = torch.tensor(self.data.std, device=images.device).view(shape)
        log_image_grid(self.log.writer, images[:64].float() * std + mean, step=0)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, steps_in_epoch: int):
        """One micro-batch: forward, backward and, every accumulate_steps micro-batches, an optimizer step.

        Returns (loss, logits, targets), or Nones for a skipped non-finite step.
        """
        t = self.cfg.trainer
        micro = (self.step_in_epoch - 1) % self.accumulate_steps  # position inside the accumulation group
        group_start = self.step_in_epoch - micro
        group_size = min(self.accumulate_steps, steps_in_epoch - group_start + 1)
        last_micro = micro == group_size - 1
        targets = labels
        if self.mixer is not None and self.mixer.enabled:
            images, targets = self.mixer(images, labels, self.mix_generator)
        # Gradients are all-reduced once per optimizer step: intermediate micro-batches skip DDP's sync. no_sync()
        # is a generator-based context manager, which can be entered only once: each `with` gets a fresh one.
        def sync_context():
            return self.ddp.no_sync() if (self.ddp is not None and not last_micro) else nullcontext()

        with sync_context(), autocast(self.device, self.precision):
            logits = self.train_model(images)
            if self.teacher is not None:
                loss = distillation_loss(
                    logits, teacher_logits(self.teacher, images), targets, float(self.cfg.teacher.temperature),
                    float(self.cfg.teacher.alpha), label_smoothing=float(t.label_smoothing),
                )
            else:
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=float(t.label_smoothing))
        if t.nonfinite == "skip" and bool(distributed.all_reduce_max((~torch.isfinite(loss.detach())).int())):
            # Opt-in, because this check waits for the device on every step. The whole accumulation group is
            # skipped at its end, so no optimizer step is taken with part of a group's gradient.
            self.group_nonfinite = True
            log.warning("non-finite loss at epoch %d step %d: its optimizer step will be skipped", self.epoch + 1,
                        self.step_in_epoch)
            loss = logits = targets = None
        elif not self.group_nonfinite:
            with sync_context():
                self.scaler.scale(loss / group_size).backward()
        if not last_micro:
            return loss, logits, targets
        if self.group_nonfinite:
            self.group_nonfinite = False
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            if self.skipped_steps > int(t.max_skipped_steps):
                raise NonFiniteLossError(
                    f"more than trainer.max_skipped_steps={t.max_skipped_steps} steps had a non-finite loss "
                    f"(the last in epoch {self.epoch + 1}, step {self.step_in_epoch}); lower optimizer.lr or set "
                    "trainer.grad_clip_norm"
                )
            log.warning("skipped the optimizer step ending at epoch %d step %d (%d so far)", self.epoch + 1,
                        self.step_in_epoch, self.skipped_steps)
            return loss, logits, targets
        if t.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t.grad_clip_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.swa is None or not self.swa.controls_lr:
            self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)
        return loss, logits, targets

    def _check_finite(self, first_bad_step: torch.Tensor) -> None:
        step = int(first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite in epoch {self.epoch + 1} at step {step}; lower "
                "optimizer.lr, set trainer.grad_clip_norm, use trainer.precision=32, or skip such steps with "
                "trainer.nonfinite=skip"
            )

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None, tta: str = "none") -> dict:
        return evaluate(
            model or self.model, getattr(self.loaders, split), num_classes=self.num_classes, device=self.device,
            precision=self.precision, predict=tta_predictor(tta),
        )

    def evaluate_epoch(self) -> dict:
        """Rank 0 evaluates the whole split (exact, no padded shards) and shares the numbers with the others."""
        split = self.monitor_split
        models = {split: self.model} | ({f"{split}_ema": self.ema.module} if self.ema is not None else {})
        record = {}
        if self.dist.is_main:
            for prefix, model in models.items():
                metrics = self.evaluate_split(split, model)
                record.update({f"{prefix}/{k}": metrics[k] for k in ("loss", "acc", "top5")})
        return distributed.broadcast_object(record)

    # ------------------------------------------------------------------------------------------- best / test
    def _update_best(self, record: dict, weights_of: torch.nn.Module) -> None:
        value = record[self.monitor]
        non_finite = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        if non_finite:
            log.warning(
                "epoch %s has non-finite %s; it cannot become best.pt", record.get("epoch"), ", ".join(non_finite)
            )
            return
        if self.best and value <= self.best[self.monitor]:
            return
        self.best = dict(record)
        if not self.dist.is_main:
            return
        checkpoint.save_checkpoint(self.run_dir / "checkpoints" / "best.pt", {
            "kind": "best",
            **self._identity(),
            "model": weights_of.state_dict(),
            "epoch": self.epoch,
            "metrics": record,
        })

    def _finish_swa(self) -> None:
        """Recompute BN statistics for the averaged weights; they become best.pt if they beat the best epoch."""
        if not self.swa.finalize(self.loaders.train):
            log.warning("trainer.swa.start_epoch=%s was never reached; no SWA model", self.cfg.trainer.swa.start_epoch)
            return
        metrics = distributed.broadcast_object(
            self.evaluate_split(self.monitor_split, self.swa.module) if self.dist.is_main else None
        )
        record = {"epoch": self.epoch, **{f"{self.monitor_split}_swa/{k}": metrics[k] for k in ("loss", "acc", "top5")}}
        self.log.scalars({k: v for k, v in record.items() if k != "epoch"}, self.epoch)
        self.swa_metrics = record
        log.info("SWA model (%d averages): %s %.4f", self.swa.num_averaged, self.monitor_split, metrics["acc"])
        if metrics["acc"] > self.best.get(self.monitor, -1.0):
            self._update_best({**record, self.monitor: metrics["acc"], "source": "swa"}, self.swa.module)

    def test_best(self) -> dict | None:
        """Evaluate the test set once, on the best model (the last one if none was ever finite); rank 0 only."""
        if not self.dist.is_main:
            distributed.barrier()
            return None
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            self.model.load_state_dict(checkpoint.load_checkpoint(best_path)["model"])
        else:
            log.warning("no epoch produced a finite %s; testing the final weights", self.monitor)
        test = self.evaluate_split("test", tta=str(self.cfg.trainer.tta))
        log.info("test (best model, epoch %s, tta %s): loss %.4f acc %.4f top5 %.4f",
                 self.best.get("epoch"), self.cfg.trainer.tta, test["loss"], test["acc"], test["top5"])
        distributed.barrier()
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
        # Each rank has its own data shard position and RNG streams; rank 0 saves them all in one file.
        per_rank = distributed.all_gather_objects({
            "loader": self.loaders.train.state_dict(),
            "rng": {"torch": rng_states(self.device), "mix": self.mix_generator.get_state(), **python_rng_state()},
        })
        if not self.dist.is_main:
            return
        checkpoint.save_checkpoint(self.run_dir / "checkpoints" / "last.pt", {
            "kind": "last",
            **self._identity(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_sums": self.epoch_sums,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "train_time": self.train_time,
            "train_samples": self.train_samples,
            "best": self.best,
            "history": self.history,
            "world_size": self.dist.world_size,
            "ranks": per_rank,
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
                f"trainer.resume={resume}: no such file; give the path of a run's checkpoints/last.pt, or "
                "trainer.resume=auto to continue the run in hydra.run.dir"
            )
        return path

    def _load_last(self, path: Path) -> None:
        # Onto the CPU, whatever the training device: RNG and generator states must be CPU ByteTensors, and
        # load_state_dict copies every other tensor to where its module or optimizer keeps it.
        state = checkpoint.load_checkpoint(path)
        if state.get("kind") != "last":
            raise CheckpointError(
                f"{path} is a '{state.get('kind')}' checkpoint without optimizer state; resume from last.pt"
            )
        saved_arch, saved_classes = state.get("model_name"), state.get("num_classes")
        if saved_classes is not None and saved_classes != self.num_classes:
            raise CheckpointError(
                f"{path} holds a {saved_arch} for {saved_classes} classes, but this run builds a {self.model_name} "
                f"for {self.num_classes} classes; resume with the dataset it was trained on, or start a new run "
                "directory (another hydra.run.dir) for this one"
            )
        checkpoint.load_model_weights(self.model, state["model"], source=str(path), expected_arch=self.model_name,
                                      saved_arch=saved_arch)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, tool in (("ema", self.ema), ("swa", self.swa)):
            if (tool is None) != (state.get(name) is None):
                raise CheckpointError(
                    f"{path} was saved with trainer.{name}.enabled={state.get(name) is not None}; resume with the same "
                    "setting"
                )
            if tool is not None:
                tool.load_state_dict(state[name])
        if state["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"{path} was saved by {state['world_size']} process(es) and this run has {self.dist.world_size}; "
                "resume with the same number of processes (torchrun --nproc_per_node)"
            )
        mine = state["ranks"][self.dist.rank]
        self.loaders.train.load_state_dict(mine["loader"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.epoch_sums = state["epoch_sums"]
        self.global_step = int(state["global_step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.train_time = float(state["train_time"])
        self.train_samples = int(state["train_samples"])
        self.best = state["best"]
        self.history = state["history"]
        set_rng_states(mine["rng"]["torch"], self.device)
        self.mix_generator.set_state(mine["rng"]["mix"])
        set_python_rng_state(mine["rng"])
        log.info("resumed from %s after epoch %d, step %d", path, self.epoch, self.step_in_epoch)

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
            "swa": self.swa_metrics,
            "test": {k: test[k] for k in ("loss", "acc", "top5")} if test else None,
            "per_class_acc": dict(zip(self.data.classes, test["per_class_acc"])) if test else None,
            "wall_time_s": wall_time,
            "img_per_s": self.train_samples / self.train_time if self.train_time else None,
            "skipped_steps": self.skipped_steps,
            "device": str(self.device),
            "history": self.history,
        }
        self.log.write_metrics(payload)
        return payload
