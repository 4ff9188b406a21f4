"""The training loop. Read it top to bottom: build the parts, then fit: for each epoch, the training steps and the
hooks; then the test of the best model.

Everything besides the steps is a hook (cifarbench.engine.hooks): the LR schedule, evaluation and best.pt, last.pt,
metrics.json and progress are built in; the tricks (EMA, SWA, lookahead, TTA, data selection, TensorBoard extras)
are callbacks from `cfg.callbacks`. The parts come from cifarbench.engine.setup; one micro-batch is engine.step."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from cifarbench.checkpoint.checkpointer import CheckedModel, Checkpointer, agree_on_resume
from cifarbench.checkpoint.resume import check_resume_config, extend_schedule
from cifarbench.checkpoint.run_files import record_run_config, run_identity
from cifarbench.config import validate
from cifarbench.data.mixing import mixed_accuracy_counts
from cifarbench.device import synchronize
from cifarbench.engine import setup
from cifarbench.engine.hooks import BatchEnd, build_callbacks, stateful
from cifarbench.engine.hooks.evaluation import BestCheckpoint, EpochEvaluation, LastCheckpoint
from cifarbench.engine.hooks.lr_schedule import LRSchedule, TrainingWindows
from cifarbench.engine.hooks.metrics_file import MetricsFile
from cifarbench.engine.hooks.progress import Progress
from cifarbench.engine.hooks.time_to_target import TimeToTarget
from cifarbench.engine.metrics import evaluate
from cifarbench.engine.runtime import RngStates, start_runtime
from cifarbench.engine.state import EpochSums, TrainState
from cifarbench.engine.step import NonFiniteLossError, TrainStep, raise_if_nonfinite
from cifarbench.engine.stopping import StopSignals, StopVote, TrainingInterrupted
from cifarbench.loggers.base import LoggerRun, build_loggers
from cifarbench.loggers.run_log import RunLog
from cifarbench.models.stats import count_parameters, forward_gflops
from cifarbench.optim.optimizer_sets import learning_rates

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
        extended_from = check_resume_config(saved.get("config"), cfg, str(resume),
                                            (saved.get("model_name"), self.model_name)) if saved else None
        if rt.dist.is_main and (saved is None or extended_from is not None):
            record_run_config(self.run_dir, cfg, self.run_info.get("hydra_files"))
        self.data, self.loaders = setup.build_training_data(cfg, rt)
        self.model, ddp, train_model = setup.build_model(cfg, rt, resuming=saved is not None)
        if t.get("init_from") and saved is None:
            setup.init_weights_from(self.model, str(t.init_from), self.model_name)
        elif saved is None:
            setup.init_from_data(self.model, self.data, rt.device)
        self.params = count_parameters(self.model)
        self.gflops = forward_gflops(self.model, setup.model_input_shape(cfg, self.data), rt.device)
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
            max_skipped_steps=int(t.max_skipped_steps))
        self.state = TrainState()
        self.callbacks = build_callbacks(cfg.get("callbacks"))
        # Every hook the loop calls, in calling order (see cifarbench.engine.hooks).
        self.hooks = {"lr_schedule": LRSchedule(self.scheduler),
                      "evaluation": EpochEvaluation(int(t.get("eval_every_n_epochs", 1))),
                      "best_checkpoint": BestCheckpoint(),
                      "time_to_target": TimeToTarget(t.get("target_acc"), bool(t.get("stop_at_target", False)),
                                                     compiled=bool(t.compile)),
                      **self.callbacks,
                      "training_windows": TrainingWindows(),
                      # The epoch's logged events go out before its last.pt: a kill in between leaves a run that
                      # restarts and drops them, never a resumed run that lacks them.
                      "progress": Progress(float(t.progress_every_s)),
                      "last_checkpoint": LastCheckpoint(int(t.checkpoint_every_n_epochs)),
                      "metrics_file": MetricsFile()}
        for callback in self.callbacks.values():
            callback.setup(self)
        self.monitor = self._monitor()

        # Everything a resume restores, by name: a stateful callback joins through self.callbacks.
        identity = run_identity(cfg, self.model_name, self.data)
        self.checkpoints = Checkpointer(self.run_dir, rt.dist, lambda: identity,
                                        enabled=bool(t.get("enable_checkpointing", True)))
        # The experiment loggers (rank 0 only); last.pt keeps their run ids, so a resume continues the same runs.
        self.log = RunLog(self.run_dir, progress_bar=bool(t.progress_bar), enabled=rt.dist.is_main,
                          loggers=build_loggers(cfg.get("logger")) if rt.dist.is_main else None)
        self.parts = {"model": CheckedModel(self.model, self.model_name), "optimizer": self.optimizer,
                      "scheduler": self.scheduler, "scaler": self.scaler, "state": self.state, "loggers": self.log}
        self.rank_parts = {"loader": self.loaders.train, "rng": RngStates(rt.device, {"mix": mix_generator})}
        if saved is not None:
            # An extended run keeps its fresh schedule, built for the new total, and continues it where it was.
            self.checkpoints.load_last(saved, resume, self.parts, self.rank_parts, stateful(self.callbacks),
                                       num_classes=self.data.num_classes, model_name=self.model_name,
                                       skip=("scheduler",) if extended_from is not None else ())
            log.info("resumed from %s after epoch %d, step %d", resume, self.state.epoch, self.state.step_in_epoch)
        # This session's entry in the run's record of sessions (how long each ran, what it changed).
        self.session = {"start_epoch": self.state.epoch, "start_step": self.state.global_step, "wall_time_s": 0.0}
        if extended_from is not None:
            self.session["extended"] = extend_schedule(self.scheduler, extended_from, float(t.epochs),
                                                       saved["scheduler"]["last_epoch"])
        self.wall_time_before = self.state.wall_time_s
        self.stop = StopSignals()
        self.stop_reason: str | None = None  # a hook's request to end the run after this epoch (request_stop)
        self.stop_vote = StopVote(rt.device, rt.dist.enabled, float(t.stop_check_s))
        # Loggers' x axis is the optimizer step: a killed session's steps after its last.pt are dropped (TB purges).
        first_step = self.state.global_step + 1 if t.resume not in (None, "", False) else None
        self.log.start(LoggerRun.of(cfg, self.run_dir, self.run_info, resumed=saved is not None, first_step=first_step))

    def _monitor(self) -> str:
        """Validation if there is one, else the test set (as CIFAR papers); EMA's selection makes its average it."""
        selected = self.hooks["best_checkpoint"].selected
        return f"{self.monitor_split}_{selected[0]}/acc" if selected else f"{self.monitor_split}/acc"

    @property
    def monitor_split(self) -> str:
        return "val" if self.data.val is not None else "test"

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def model_name(self) -> str:
        return setup.model_name(self.cfg, self.run_info.get("choices", {}))

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self) -> dict:
        status = "failed"
        try:
            with self.log.redirect_logging():
                result = self._fit()
            status = "completed"
            return result
        except TrainingInterrupted:
            status = "interrupted"
            raise
        finally:
            # Whatever ended the run, what was logged reaches the disk, and each logger's run says how it ended.
            self.log.close(status)
            self.loaders.close()

    def _fit(self) -> dict:
        state = self.state
        if self.runtime.dist.is_main:
            log.info("run directory: %s", self.run_dir.resolve())
        log.info("%s: %.2fM parameters, %.3f GFLOPs/image, %d train / %s val / %d test images on %s, monitoring %s",
                 self.model_name, self.params / 1e6, self.gflops, len(self.data.train),
                 len(self.data.val) if self.data.val is not None else "no", len(self.data.test), self.device,
                 self.monitor)
        self.session_started = time.perf_counter()
        state.sessions.append(self.session)
        self._call("on_fit_start")
        try:
            with self.stop:
                while state.epoch < self.epochs and not self.stop_reason:
                    self._call("on_epoch_start")
                    record = {"epoch": state.epoch + 1, **self.train_epoch()}
                    state.epoch += 1
                    state.history.append(record)  # the epoch-end hooks complete it (evaluation adds its metrics)
                    self._call("on_train_epoch_end")
                    self._call("on_epoch_end", record)  # evaluation, best.pt, callbacks, last.pt, metrics, progress
                # Still inside the signal handlers: a stop signal from here on lets the final test finish (training
                # is saved by then), so the run completes instead of dying with metrics.json at "running".
                return self._test_and_finish()
        except TrainingInterrupted as stop:
            self._call("on_interrupt", stop)
            self.log.close("interrupted")
            # Everything is on disk: now the scheduler's own handler may requeue the job and exit.
            self.stop.hand_over()
            raise

    def _test_and_finish(self) -> dict:
        if self.stop_reason:
            log.info("training ends after epoch %d of %d: %s", self.state.epoch, self.epochs, self.stop_reason)
        self._call("on_train_end")
        test = self.hooks["evaluation"].test(self)
        self._call("on_test_end", test)
        result = self.hooks["metrics_file"].result
        self._call("on_fit_end", result, test)
        if self.stop.requested:
            log.warning("%s arrived after the last training step: the test finished and the run is complete",
                        self.stop.requested)
        return result

    def request_stop(self, reason: str) -> None:
        """End the run after this epoch's hooks, as a finished one (last.pt saved, the selected model tested). Every
        rank must ask alike: decide from the broadcast evaluation, never from one rank's numbers."""
        self.stop_reason = self.stop_reason or reason

    def session_time(self) -> float:
        started = getattr(self, "session_started", None)
        return time.perf_counter() - started if started is not None else 0.0

    def _call(self, hook: str, *args) -> None:
        for callback in self.hooks.values():
            getattr(callback, hook)(self, *args)

    def epoch_steps(self) -> int:
        """Micro-batches of the epoch that trains next: all of them, or the rest of a fractional last one."""
        return min(self.steps_per_epoch, self.total_steps - self.state.epoch * self.steps_per_epoch)

    def train_epoch(self) -> dict:
        state, loader = self.state, self.loaders.train
        steps = self.epoch_steps()
        loader.set_epoch(state.epoch + 1)
        if self.step.trainable_changed():
            # A training window closed, or a callback froze or thawed parameters in on_epoch_start. DDP expects a
            # gradient for every parameter that trained when it was built: wrap the model again.
            self.step.rewrap(*setup.wrap_for_training(self.model, self.cfg, self.runtime))
            log.info("epoch %d: the trainable parameters changed, so DDP wraps the model anew", state.epoch + 1)
        self.step.train_model.train()
        sums = EpochSums(self.device, state.epoch_sums)
        every_n, lr = int(self.cfg.trainer.log_every_n_steps), self.optimizer.param_groups[0]["lr"]
        synchronize(self.device)
        started = time.perf_counter() - sums.elapsed_before
        # islice: trainer.limit_train_batches ends the epoch early (steps is the limited count).
        for images, labels in itertools.islice(loader, steps - state.step_in_epoch):
            state.step_in_epoch += 1
            loss, logits, targets = self.train_step(images, labels, steps)
            sums.extra_passes += self.step.take_extra_passes()
            if loss is not None:
                sums.add(state.step_in_epoch, loss, mixed_accuracy_counts(logits.detach(), targets), len(logits))
            # Reading a device value waits for the GPU, so the loss is only looked at every n optimizer steps (whole
            # accumulation groups). Ranks agree on what they saw there, so that none stops alone and hangs the rest.
            group_end = self.step.at_group_end(state.step_in_epoch, steps)
            log_step = self.step.is_log_step(state.step_in_epoch, steps, every_n)
            if log_step:
                raise_if_nonfinite(sums.first_nonfinite_step(), state.epoch + 1)
            self._call("on_train_batch_end", BatchEnd(state.step_in_epoch, steps, log_step, lr, started, sums.read))
            lr = self.optimizer.param_groups[0]["lr"]
            # A stop lands only between optimizer steps: gradients of a half-done accumulation group are not saved.
            if group_end and self.stop_vote.should_stop(
                self.stop.requested, last=state.step_in_epoch == steps
            ):
                self.stop.requested = self.stop.requested or "a signal to another rank"
                raise_if_nonfinite(sums.first_nonfinite_step(), state.epoch + 1)
                synchronize(self.device)
                state.epoch_sums = sums.saved(time.perf_counter() - started)
                self.save_last()
                raise TrainingInterrupted(
                    f"stopped by {self.stop.requested} in epoch {state.epoch + 1} after step {state.step_in_epoch}; "
                    "rerun the same command with trainer.resume=auto to continue"
                )
        synchronize(self.device)
        elapsed = time.perf_counter() - started
        loss_total, correct_total, seen = sums.totals()  # over all ranks: the whole epoch
        state.train_time += elapsed - sums.elapsed_before
        state.train_samples += seen - sums.seen_before * self.runtime.dist.world_size
        extra = sums.extra_passes * self.runtime.dist.world_size  # every rank passes its images alike
        state.extra_passes += extra - sums.extra_before * self.runtime.dist.world_size
        state.step_in_epoch, state.epoch_sums = 0, None
        return {"train/loss": loss_total / max(seen, 1), "train/acc": correct_total / max(seen, 1),
                **learning_rates(self.optimizer), "time/epoch_s": elapsed,
                "throughput/img_per_s": seen / elapsed,  # training images: an image SAM passes twice counts once
                "throughput/passes_per_image": (seen + extra) / max(seen, 1)}  # SAM: 2

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, steps_in_epoch: int):
        """Micro-batch state.step_in_epoch: (loss, logits, targets), Nones for a skipped non-finite one. A hook may
        replace the batch first (data selection keeps its hardest examples); the step and the counts see that one."""
        for hook in self.hooks.values():
            images, labels = hook.on_train_batch_start(self, images, labels) or (images, labels)
        loss, logits, targets, stepped = self.step(images, labels, self.state, steps_in_epoch)
        if stepped:
            self._call("on_optimizer_step", images)
        return loss, logits, targets

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None, predict=None) -> dict:
        """Metrics of `model` (default: the trained one) on a split; `predict(model, images)`: TTA's forward."""
        loader, limit = getattr(self.loaders, split), self.cfg.trainer.get("limit_eval_batches")
        if limit:
            loader.restart()  # the previous evaluation stopped part way
        return evaluate(model or self.model, itertools.islice(loader, int(limit)) if limit else loader,
                        num_classes=self.data.num_classes, device=self.device, precision=self.runtime.precision,
                        predict=predict)

    # ------------------------------------------------------------------------------------------- last / test
    def save_last(self) -> None:
        self.session["wall_time_s"] = self.session_time()
        self.state.wall_time_s = self.wall_time_before + self.session["wall_time_s"]
        self.checkpoints.save_last(self.parts, self.rank_parts, stateful(self.callbacks), self.state.epoch)
