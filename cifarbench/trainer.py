"""The training loop. Read it top to bottom: build the parts, fit (train an epoch, evaluate, log, checkpoint), test.

The parts live in cifarbench.engine (runtime, setup, state, step, stopping, checkpointing, callbacks); the tricks
(EMA, SWA, the TensorBoard extras) are callbacks from `cfg.callbacks`, the loss comes from `cfg.loss`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from cifarbench import distributed
from cifarbench.checkpoint import load_checkpoint
from cifarbench.config import validate
from cifarbench.data.mixing import mixed_accuracy_counts
from cifarbench.device import synchronize
from cifarbench.engine import setup
from cifarbench.engine.callbacks import build_callbacks, stateful
from cifarbench.engine.checkpointing import CheckedModel, Checkpointer, resume_path
from cifarbench.engine.records import metrics_payload, run_identity
from cifarbench.engine.runtime import RngStates, start_runtime
from cifarbench.engine.state import TrainState
from cifarbench.engine.step import NonFiniteLossError, TrainStep
from cifarbench.engine.stopping import StopSignals, StopVote, TrainingInterrupted
from cifarbench.metrics import evaluate
from cifarbench.model_stats import count_parameters, forward_gflops
from cifarbench.run_log import RunLog
from cifarbench.tricks.tta import tta_predictor

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted"]

log = logging.getLogger("cifarbench")


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, run_info: dict | None = None):
        validate(cfg)
        self.cfg, self.run_dir, self.run_info = cfg, Path(run_dir), run_info or {}
        t = cfg.trainer
        self.runtime = rt = start_runtime(t, self.run_dir)
        self.data, self.loaders = setup.build_training_data(cfg, rt)
        self.model, ddp, train_model = setup.build_model(cfg, rt)
        self.params = count_parameters(self.model)
        self.gflops = forward_gflops(self.model, tuple(self.data.train.images.shape[1:]), rt.device)
        self.global_batch = setup.global_batch(cfg, rt)
        self.optimizer, self.scheduler, self.scaler = setup.build_optimization(
            cfg, self.model, rt, micro_batches_per_epoch=len(self.loaders.train))
        mixer, mix_generator = setup.build_mixing(cfg)
        self.step = TrainStep(
            model=self.model, train_model=train_model, ddp=ddp, optimizer=self.optimizer, scheduler=self.scheduler,
            scaler=self.scaler, loss=setup.build_loss(cfg, rt, self.data.num_classes), mixer=mixer,
            mix_generator=mix_generator, device=rt.device, precision=rt.precision,
            accumulate_steps=int(t.accumulate_steps), grad_clip_norm=t.grad_clip_norm, nonfinite=str(t.nonfinite),
            max_skipped_steps=int(t.max_skipped_steps),
        )
        self.state = TrainState()
        self.callbacks = build_callbacks(cfg.get("callbacks"))
        for callback in self.callbacks.values():
            callback.setup(self)
        self.monitor = self._monitor()

        # Everything a resume restores, by name: a stateful callback joins through self.callbacks.
        self.checkpoints = Checkpointer(self.run_dir, rt.dist, lambda: run_identity(self))
        self.parts = {"model": CheckedModel(self.model, self.model_name), "optimizer": self.optimizer,
                      "scheduler": self.scheduler, "scaler": self.scaler, "state": self.state}
        self.rank_parts = {"loader": self.loaders.train, "rng": RngStates(rt.device, {"mix": mix_generator})}
        resume = resume_path(self.run_dir, t.resume)
        if resume is not None:
            self.checkpoints.load_last(resume, self.parts, self.rank_parts, stateful(self.callbacks),
                                       num_classes=self.data.num_classes, model_name=self.model_name)
            log.info("resumed from %s after epoch %d, step %d", resume, self.state.epoch, self.state.step_in_epoch)
        self.stop = StopSignals()
        self.stop_vote = StopVote(rt.device, rt.dist.enabled, float(t.stop_check_s))
        self.log = RunLog(self.run_dir, progress_bar=bool(t.progress_bar), enabled=rt.dist.is_main,
                          purge_step=max(self.state.epoch, 1) if t.resume not in (None, "", False) else None)
        history = self.state.history
        if resume is not None and history and history[-1]["epoch"] == self.state.epoch:
            # The purge above dropped every event from this epoch on, end-of-run ones (SWA, hparams) included, so
            # that a rerun logs them once; the epoch's own scalars come back from the checkpoint's history.
            self.log.scalars({k: v for k, v in history[-1].items() if k != "epoch"}, self.state.epoch)

    def _selected_model(self) -> tuple[str, torch.nn.Module] | None:
        """The first eval model of a callback that selects best (EMA's averaged weights), if any."""
        for callback in self.callbacks.values():
            if callback.selects_best and callback.eval_models():
                return next(iter(callback.eval_models().items()))
        return None

    def _monitor(self) -> str:
        """Validation if there is a split for it, else the test set as CIFAR papers do; a callback that selects
        best (EMA) makes its averaged weights the ones monitored and saved as best.pt."""
        selected = self._selected_model()
        return f"{self.monitor_split}_{selected[0]}/acc" if selected else f"{self.monitor_split}/acc"

    @property
    def monitor_split(self) -> str:
        return "val" if self.data.val is not None else "test"

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def model_name(self) -> str:
        return self.run_info.get("choices", {}).get("model") or self.cfg.model._target_.rsplit(".", 1)[-1]

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            # Whatever ended the run, the events written so far reach the disk.
            self.log.close()

    def _fit(self) -> dict:
        t, state = self.cfg.trainer, self.state
        log.info(
            "%s: %.2fM parameters, %.3f GFLOPs/image, %d train / %s val / %d test images on %s, monitoring %s",
            self.model_name, self.params / 1e6, self.gflops, len(self.data.train),
            len(self.data.val) if self.data.val is not None else "no", len(self.data.test), self.device,
            self.monitor,
        )
        started = time.perf_counter()
        self._call("on_fit_start")
        epochs = self.log.bar(total=int(t.epochs), initial=state.epoch, desc="epochs", position=0, leave=True)
        try:
            with self.stop:
                while state.epoch < int(t.epochs):
                    self._call("on_epoch_start")
                    record = {"epoch": state.epoch + 1, **self.train_epoch()}
                    state.epoch += 1
                    self._call("on_train_epoch_end")
                    record.update(self.evaluate_epoch())
                    state.history.append(record)
                    self.log.scalars({k: v for k, v in record.items() if k != "epoch"}, state.epoch)
                    selected = self._selected_model()
                    self.update_best(record, selected[1] if selected else self.model)
                    if state.epoch % int(t.checkpoint_every_n_epochs) == 0 or state.epoch == int(t.epochs):
                        self.save_last()
                    self._write_metrics(status="running", wall_time=time.perf_counter() - started)
                    epochs.update(1)
                    epochs.set_postfix({self.monitor: f"{record[self.monitor]:.4f}"})
                    log.info(
                        "epoch %d/%d  train loss %.4f acc %.4f  %s %.4f  lr %.4g  %.0f img/s",
                        state.epoch, int(t.epochs), record["train/loss"], record["train/acc"], self.monitor,
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
        self._call("on_train_end")
        test = self.test_best()
        result = self._write_metrics(status="completed", wall_time=time.perf_counter() - started, test=test)
        self._call("on_fit_end", result, test)
        return result

    def _write_metrics(self, **kwargs) -> dict:
        payload = metrics_payload(self, **kwargs)
        self.log.write_metrics(payload)
        return payload

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks.values():
            getattr(callback, hook)(self, *args)

    def train_epoch(self) -> dict:
        t, state, loader = self.cfg.trainer, self.state, self.loaders.train
        loader.set_epoch(state.epoch + 1)
        self.step.train_model.train()
        sums = state.epoch_sums or {"loss": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0}
        # float32 and int64 accumulators: every device has them (MPS has no float64).
        loss_sum = torch.tensor(sums["loss"], dtype=torch.float32, device=self.device)
        correct = torch.tensor(sums["correct"], dtype=torch.int64, device=self.device)
        seen = sums["seen"]
        # The step of the first non-finite loss, tracked on the device so that checking it costs no sync per step.
        first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = self.log.bar(loader, total=len(loader), initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
                           position=1)
        synchronize(self.device)
        started = time.perf_counter() - sums["elapsed"]
        for images, labels in bar:
            state.step_in_epoch += 1
            loss, logits, targets = self.train_step(images, labels, len(loader))
            if loss is not None:
                loss_sum += loss.detach() * len(labels)
                correct += mixed_accuracy_counts(logits.detach(), targets)
                seen += len(labels)
                first_bad_step = torch.where(
                    (first_bad_step < 0) & ~torch.isfinite(loss.detach()), state.step_in_epoch, first_bad_step
                )
            # Reading a device value waits for the GPU, so the loss is only looked at every few steps. Ranks look
            # at the same steps and agree on what they saw, so that none of them stops alone and hangs the others.
            last = state.step_in_epoch == len(loader)
            if state.step_in_epoch % int(t.log_every_n_steps) == 0 or last:
                self._check_finite(distributed.all_reduce_max(first_bad_step.clone()))
                bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}", acc=f"{int(correct) / max(seen, 1):.4f}",
                                lr=f"{lr:.4g}", img_s=f"{seen / (time.perf_counter() - started):.0f}")
            lr = self.optimizer.param_groups[0]["lr"]
            # A stop lands only between optimizer steps: gradients of a half-done accumulation group are not saved.
            if self.step.at_group_end(state.step_in_epoch, len(loader)) and self.stop_vote.should_stop(
                self.stop.requested, last=last
            ):
                self.stop.requested = self.stop.requested or "a signal to another rank"
                self._check_finite(distributed.all_reduce_max(first_bad_step.clone()))
                synchronize(self.device)
                state.epoch_sums = {"loss": float(loss_sum), "correct": int(correct), "seen": seen,
                                    "elapsed": time.perf_counter() - started}
                self.save_last()
                raise TrainingInterrupted(
                    f"stopped by {self.stop.requested} in epoch {state.epoch + 1} after step {state.step_in_epoch}; "
                    "rerun the same command with trainer.resume=auto to continue"
                )
        synchronize(self.device)
        elapsed = time.perf_counter() - started
        bar.close()
        # Sums over all ranks, so the logged training metrics cover the whole epoch.
        loss_total = float(distributed.all_reduce_sum(loss_sum.clone()))
        counts = distributed.all_reduce_sum(torch.stack([correct, torch.tensor(seen, device=self.device)]))
        correct_total, seen = (int(c) for c in counts.tolist())
        state.train_time += elapsed - sums["elapsed"]
        state.train_samples += seen - sums["seen"] * self.runtime.dist.world_size
        state.step_in_epoch, state.epoch_sums = 0, None
        return {
            "train/loss": loss_total / max(seen, 1),
            "train/acc": correct_total / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time/epoch_s": elapsed,
            "throughput/img_per_s": seen / elapsed,
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, steps_in_epoch: int):
        """Micro-batch state.step_in_epoch: (loss, logits, targets), Nones for a skipped non-finite one."""
        hold_lr = any(cb.controls_lr for cb in self.callbacks.values())
        loss, logits, targets, stepped = self.step(images, labels, self.state, steps_in_epoch, hold_lr=hold_lr)
        if stepped:
            self._call("on_optimizer_step", images)
        return loss, logits, targets

    def _check_finite(self, first_bad_step: torch.Tensor) -> None:
        step = int(first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite in epoch {self.state.epoch + 1} at step {step}; lower "
                "optimizer.lr, set trainer.grad_clip_norm, use trainer.precision=32, or skip such steps with "
                "trainer.nonfinite=skip"
            )

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None, tta: str = "none") -> dict:
        return evaluate(
            model or self.model, getattr(self.loaders, split), num_classes=self.data.num_classes, device=self.device,
            precision=self.runtime.precision, predict=tta_predictor(tta),
        )

    def evaluate_epoch(self) -> dict:
        """Rank 0 evaluates the whole split (exact, no padded shards) and shares the numbers with the others; the
        callbacks' models (EMA) are evaluated beside the trained one."""
        split = self.monitor_split
        models = {split: self.model}
        for callback in self.callbacks.values():
            models |= {f"{split}_{name}": model for name, model in callback.eval_models().items()}
        record = {}
        if self.runtime.dist.is_main:
            for prefix, model in models.items():
                metrics = self.evaluate_split(split, model)
                record.update({f"{prefix}/{k}": metrics[k] for k in ("loss", "acc", "top5")})
        return distributed.broadcast_object(record)

    # ------------------------------------------------------------------------------------------- best / test
    def update_best(self, record: dict, weights_of: torch.nn.Module) -> None:
        non_finite = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        if non_finite:
            log.warning(
                "epoch %s has non-finite %s; it cannot become best.pt", record.get("epoch"), ", ".join(non_finite)
            )
            return
        if self.state.best and record[self.monitor] <= self.state.best[self.monitor]:
            return
        self.state.best = dict(record)
        self.checkpoints.save_best(weights_of, self.state.epoch, record)

    def save_last(self) -> None:
        self.checkpoints.save_last(self.parts, self.rank_parts, stateful(self.callbacks), self.state.epoch)

    def test_best(self) -> dict | None:
        """Evaluate the test set once, on the best model (the last one if none was ever finite); rank 0 only."""
        if not self.runtime.dist.is_main:
            distributed.barrier()
            return None
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path)["model"])
        else:
            log.warning("no epoch produced a finite %s; testing the final weights", self.monitor)
        test = self.evaluate_split("test", tta=str(self.cfg.trainer.tta))
        log.info("test (best model, epoch %s, tta %s): loss %.4f acc %.4f top5 %.4f",
                 self.state.best.get("epoch"), self.cfg.trainer.tta, test["loss"], test["acc"], test["top5"])
        distributed.barrier()
        return test
