"""The training loop. Read it top to bottom: build the parts, fit (train an epoch, evaluate, log, checkpoint), test.

The parts live in cifarbench.engine (runtime, setup, state, step, stopping, checkpointing, callbacks); the tricks
(EMA, SWA, the TensorBoard extras) are callbacks from `cfg.callbacks`, the loss comes from `cfg.loss`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from cifarbench import distributed
from cifarbench.callbacks import evaluation
from cifarbench.callbacks.lr_schedule import LRSchedule
from cifarbench.callbacks.progress import EpochProgress, log_epoch, log_summary
from cifarbench.callbacks.tta import tta_predictor
from cifarbench.checkpoint.checkpointer import CheckedModel, Checkpointer, agree_on_resume
from cifarbench.checkpoint.resume import check_resume_config, extend_schedule
from cifarbench.checkpoint.run_files import metrics_payload, record_run_config, run_identity
from cifarbench.config import validate
from cifarbench.data.mixing import mixed_accuracy_counts
from cifarbench.device import synchronize
from cifarbench.engine import setup
from cifarbench.engine.hooks import build_callbacks, stateful
from cifarbench.engine.metrics import evaluate
from cifarbench.engine.runtime import RngStates, start_runtime
from cifarbench.engine.state import TrainState
from cifarbench.engine.step import NonFiniteLossError, TrainStep, raise_if_nonfinite
from cifarbench.engine.stopping import StopSignals, StopVote, TrainingInterrupted
from cifarbench.loggers.run_log import RunLog
from cifarbench.models.stats import count_parameters, forward_gflops
from cifarbench.optim.optimizer_sets import learning_rates
from cifarbench.optim.param_groups import apply_training_windows

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted"]

log = logging.getLogger("cifarbench")


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path, run_info: dict | None = None):
        validate(cfg)
        self.cfg, self.run_dir, self.run_info = cfg, Path(run_dir), run_info or {}
        t = cfg.trainer
        self.runtime = rt = start_runtime(t, self.run_dir)
        # A resume is checked before anything is built: a changed config is refused before data is read.
        resume, saved = agree_on_resume(self.run_dir, t.resume, rt.dist)
        extended_from = check_resume_config(saved.get("config"), cfg, str(resume)) if saved else None
        if rt.dist.is_main and (saved is None or extended_from is not None):
            record_run_config(self.run_dir, cfg, self.run_info.get("hydra_files"))
        self.data, self.loaders = setup.build_training_data(cfg, rt)
        self.model, ddp, train_model = setup.build_model(cfg, rt)
        if t.get("init_from") and saved is None:
            setup.init_weights_from(self.model, str(t.init_from), self.model_name)
        elif saved is None:
            setup.init_from_data(self.model, self.data, rt.device)
        self.params = count_parameters(self.model)
        self.gflops = forward_gflops(self.model, tuple(self.data.train.images.shape[1:]), rt.device)
        self.global_batch = setup.global_batch(cfg, rt)
        self.steps_per_epoch = setup.train_batches(cfg, self.loaders.train)  # micro-batches
        # trainer.epochs may be fractional: ceil(epochs x steps) micro-batches, the last epoch stopping part way.
        self.epochs = math.ceil(float(t.epochs))
        self.total_steps = math.ceil(float(t.epochs) * self.steps_per_epoch)
        self.optimizer, self.scheduler, self.scaler = setup.build_optimization(
            cfg, self.model, rt, micro_batches_per_epoch=self.steps_per_epoch)
        mixer, mix_generator = setup.build_mixing(cfg)
        self.step = TrainStep(
            model=self.model, train_model=train_model, ddp=ddp, optimizer=self.optimizer, scaler=self.scaler,
            loss=setup.build_loss(cfg, rt, self.data.num_classes), mixer=mixer,
            mix_generator=mix_generator, device=rt.device, precision=rt.precision,
            accumulate_steps=int(t.accumulate_steps), grad_clip_norm=t.grad_clip_norm, nonfinite=str(t.nonfinite),
            max_skipped_steps=int(t.max_skipped_steps),
        )
        self.state = TrainState()
        self.callbacks = build_callbacks(cfg.get("callbacks"))
        # Every hook the loop calls, in order: the built-in ones first, then the config's callbacks.
        self.hooks = {"lr_schedule": LRSchedule(self.scheduler),
                      "evaluation": evaluation.EpochEvaluation(int(t.get("eval_every_n_epochs", 1))),
                      "best_checkpoint": evaluation.BestCheckpoint(), **self.callbacks}
        for callback in self.callbacks.values():
            callback.setup(self)
        self.monitor = self._monitor()

        # Everything a resume restores, by name: a stateful callback joins through self.callbacks.
        self.checkpoints = Checkpointer(self.run_dir, rt.dist, lambda: run_identity(self),
                                        enabled=bool(t.get("enable_checkpointing", True)))
        self.parts = {"model": CheckedModel(self.model, self.model_name), "optimizer": self.optimizer,
                      "scheduler": self.scheduler, "scaler": self.scaler, "state": self.state}
        self.rank_parts = {"loader": self.loaders.train, "rng": RngStates(rt.device, {"mix": mix_generator})}
        if saved is not None:
            # An extended run keeps its fresh schedule, built for the new total, and continues it where it was.
            self.checkpoints.load_last(saved, resume, self.parts, self.rank_parts, stateful(self.callbacks),
                                       num_classes=self.data.num_classes, model_name=self.model_name,
                                       skip=("scheduler",) if extended_from is not None else ())
            log.info("resumed from %s after epoch %d, step %d", resume, self.state.epoch, self.state.step_in_epoch)
            if t.get("init_from"):
                log.info("trainer.init_from is ignored: this run continues from its own %s", resume)
        # This session's entry in the run's record of sessions (how long each ran, what it changed).
        self.session = {"start_epoch": self.state.epoch, "start_step": self.state.global_step, "wall_time_s": 0.0}
        if extended_from is not None:
            self.session["extended"] = extend_schedule(self.scheduler, extended_from, float(t.epochs),
                                                       saved["scheduler"]["last_epoch"])
        self.wall_time_before = self.state.wall_time_s
        self.stop = StopSignals()
        self.stop_vote = StopVote(rt.device, rt.dist.enabled, float(t.stop_check_s))
        # TensorBoard's x axis is the optimizer step for every scalar, so one purge step drops exactly what a killed
        # session logged after its last checkpoint, and each step is logged once.
        self.log = RunLog(self.run_dir, progress_bar=bool(t.progress_bar), enabled=rt.dist.is_main,
                          purge_step=self.state.global_step + 1 if t.resume not in (None, "", False) else None)

    def selected_model(self) -> tuple[str, torch.nn.Module] | None:
        """The first eval model of a callback that selects best (EMA's averaged weights), if any."""
        for callback in self.callbacks.values():
            if callback.selects_best and callback.eval_models():
                return next(iter(callback.eval_models().items()))
        return None

    def _monitor(self) -> str:
        """Validation if there is a split for it, else the test set as CIFAR papers do; a callback that selects
        best (EMA) makes its averaged weights the ones monitored and saved as best.pt."""
        selected = self.selected_model()
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
            with self.log.redirect_logging():
                return self._fit()
        finally:
            # Whatever ended the run, the events written so far reach the disk.
            self.log.close()

    def _fit(self) -> dict:
        t, state = self.cfg.trainer, self.state
        if self.runtime.dist.is_main:
            log.info("run directory: %s", self.run_dir.resolve())
        log.info(
            "%s: %.2fM parameters, %.3f GFLOPs/image, %d train / %s val / %d test images on %s, monitoring %s",
            self.model_name, self.params / 1e6, self.gflops, len(self.data.train),
            len(self.data.val) if self.data.val is not None else "no", len(self.data.test), self.device,
            self.monitor,
        )
        self.session_started = time.perf_counter()
        self.state.sessions.append(self.session)
        self._call("on_fit_start")
        epochs = self.log.bar(total=self.epochs, initial=state.epoch, desc="epochs", position=0, leave=True)
        try:
            with self.stop:
                while state.epoch < self.epochs:
                    self._call("on_epoch_start")
                    record = {"epoch": state.epoch + 1, **self.train_epoch()}
                    state.epoch += 1
                    self._call("on_train_epoch_end")
                    self._call("on_epoch_end", record)  # evaluation, then best.pt, then the callbacks
                    state.history.append(record)
                    self.log.scalars({**record, "best/acc": state.best.get(self.monitor),
                                      "best/epoch": state.best.get("epoch")}, state.global_step)
                    if state.epoch % int(t.checkpoint_every_n_epochs) == 0 or state.epoch == self.epochs:
                        self.save_last()
                    self._write_metrics(status="running")
                    epochs.update(1)
                    log_epoch(record, self.epochs, self.monitor)
        except TrainingInterrupted as stop:
            self._write_metrics(status="interrupted", error=str(stop))
            self.log.close()
            # Everything is on disk: now the scheduler's own handler may requeue the job and exit.
            self.stop.hand_over()
            raise
        finally:
            epochs.close()
        self._call("on_train_end")
        test = self.test_best()
        result = self._write_metrics(status="completed", test=test)
        self._call("on_fit_end", result, test)
        if self.runtime.dist.is_main:
            log_summary(self.run_dir, result, self.checkpoints.enabled)
        return result

    def session_time(self) -> float:
        started = getattr(self, "session_started", None)
        return time.perf_counter() - started if started is not None else 0.0

    def _write_metrics(self, **kwargs) -> dict:
        payload = metrics_payload(self, session_time=self.session_time(), **kwargs)
        self.log.write_metrics(payload)
        return payload

    def _call(self, hook: str, *args) -> None:
        for callback in self.hooks.values():
            getattr(callback, hook)(self, *args)

    def train_epoch(self) -> dict:
        state, loader = self.state, self.loaders.train
        steps = min(self.steps_per_epoch, self.total_steps - state.epoch * self.steps_per_epoch)
        loader.set_epoch(state.epoch + 1)
        apply_training_windows(self.optimizer, state.epoch)
        if self.step.trainable_changed():
            # A training window closed, or a callback froze or thawed parameters in on_epoch_start. DDP expects a
            # gradient for every parameter that trained when it was built: wrap the model again.
            self.step.rewrap(*setup.wrap_for_training(self.model, self.cfg, self.runtime))
            log.info("epoch %d: the trainable parameters changed, so DDP wraps the model anew", state.epoch + 1)
        self.step.train_model.train()
        sums = state.epoch_sums or {"loss": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0}
        # float32 and int64 accumulators: every device has them (MPS has no float64).
        loss_sum = torch.tensor(sums["loss"], dtype=torch.float32, device=self.device)
        correct = torch.tensor(sums["correct"], dtype=torch.int64, device=self.device)
        seen = sums["seen"]
        # The step of the first non-finite loss, tracked on the device so that checking it costs no sync per step.
        first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        # islice: trainer.limit_train_batches ends the epoch early (steps is the limited count).
        bar = self.log.bar(itertools.islice(loader, steps - state.step_in_epoch), total=steps,
                           initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}", position=1)
        synchronize(self.device)
        started = time.perf_counter() - sums["elapsed"]
        progress = EpochProgress(self, bar, steps, sums, started)
        for images, labels in bar:
            state.step_in_epoch += 1
            loss, logits, targets = self.train_step(images, labels, steps)
            if loss is not None:
                loss_sum += loss.detach() * len(labels)
                correct += mixed_accuracy_counts(logits.detach(), targets)
                seen += len(labels)
                first_bad_step = torch.where(
                    (first_bad_step < 0) & ~torch.isfinite(loss.detach()), state.step_in_epoch, first_bad_step
                )
            # Reading a device value waits for the GPU, so the loss is only looked at every few steps. Ranks look
            # at the same steps and agree on what they saw, so that none of them stops alone and hangs the others.
            last = state.step_in_epoch == steps
            if progress.is_log_step(state.step_in_epoch):
                self._check_finite(distributed.all_reduce_max(first_bad_step.clone()))
                progress.report(state.step_in_epoch, loss_sum, correct, seen, lr)
            elif progress.line_due():
                progress.report(state.step_in_epoch, loss_sum, correct, seen, lr)
            lr = self.optimizer.param_groups[0]["lr"]
            # A stop lands only between optimizer steps: gradients of a half-done accumulation group are not saved.
            if self.step.at_group_end(state.step_in_epoch, steps) and self.stop_vote.should_stop(
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
            **learning_rates(self.optimizer),
            "time/epoch_s": elapsed,
            "throughput/img_per_s": seen / elapsed,
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, steps_in_epoch: int):
        """Micro-batch state.step_in_epoch: (loss, logits, targets), Nones for a skipped non-finite one."""
        loss, logits, targets, stepped = self.step(images, labels, self.state, steps_in_epoch)
        if stepped:
            self._call("on_optimizer_step", images)
        return loss, logits, targets

    def _check_finite(self, first_bad_step: torch.Tensor) -> None:
        raise_if_nonfinite(int(first_bad_step), self.state.epoch + 1)

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None, tta: str = "none") -> dict:
        loader, limit = getattr(self.loaders, split), self.cfg.trainer.get("limit_eval_batches")
        if limit:
            loader.restart()  # the previous evaluation stopped part way
        return evaluate(
            model or self.model, itertools.islice(loader, int(limit)) if limit else loader,
            num_classes=self.data.num_classes, device=self.device, precision=self.runtime.precision,
            predict=tta_predictor(tta),
        )

    # ------------------------------------------------------------------------------------------- last / test
    def save_last(self) -> None:
        self.session["wall_time_s"] = self.session_time()
        self.state.wall_time_s = self.wall_time_before + self.session["wall_time_s"]
        self.checkpoints.save_last(self.parts, self.rank_parts, stateful(self.callbacks), self.state.epoch)

    def test_best(self) -> dict | None:
        return evaluation.test_best(self)
