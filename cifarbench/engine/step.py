"""One micro-batch of training: mixing, forward and loss under autocast, backward, and at the end of each
accumulation group the optimizer step (unscale -> clip -> step -> scaler update) and zero_grad. The optimizer gets
a closure (cifarbench.optim.closure), so one that evaluates the loss again within a step (SAM) needs nothing
special in the loop. The passes such a closure runs again see the same micro-batches, are unscaled and clipped like
the first, leave BatchNorm's running statistics alone and are counted (`extra_passes`). The LR schedule is a hook
(cifarbench.engine.hooks.lr_schedule) that the loop calls after each optimizer step."""

from __future__ import annotations

import gc
import logging
import math
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from cifarbench import distributed
from cifarbench.device import autocast, scaler_found_inf
from cifarbench.errors import CifarbenchError
from cifarbench.optim.closure import ClosureStepper, StepClosure

log = logging.getLogger("cifarbench")


class NonFiniteLossError(CifarbenchError, RuntimeError):
    """The training loss became NaN or infinite."""


def raise_if_nonfinite(first_bad_step: int, epoch: int) -> None:
    if first_bad_step >= 0:
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite in epoch {epoch} at step {first_bad_step}; lower "
            "optimizer.lr, set trainer.grad_clip_norm, use trainer.precision=32, or skip such steps with "
            "trainer.nonfinite=skip"
        )


def optimizer_steps(micro_batches: int, per_epoch: int, accumulate_steps: int) -> int:
    """The optimizer steps that `micro_batches` micro-batches of a run make: every epoch's last group steps, even a
    short one, so an epoch of 5 micro-batches in groups of 2 makes 3."""
    full_epochs, rest = divmod(micro_batches, per_epoch)
    return full_epochs * math.ceil(per_epoch / accumulate_steps) + math.ceil(rest / accumulate_steps)


@contextmanager
def running_stats_frozen(model: nn.Module):
    """Normalisation layers in training mode normalise with the batch's statistics but leave their running
    statistics (and batch count) as they are: a pass that evaluates the loss again within one optimizer step has
    not seen new data."""
    norms = [module for module in model.modules()
             if isinstance(module, nn.modules.batchnorm._NormBase) and module.training and module.track_running_stats]
    for module in norms:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in norms:
            module.track_running_stats = True


class TrainStep:
    def __init__(self, *, model, train_model, ddp, optimizer, scaler, loss, mixer, mix_generator,
                 device: torch.device, precision: str, accumulate_steps: int, grad_clip_norm: float | None,
                 nonfinite: str, max_skipped_steps: int):
        self.model, self.train_model, self.ddp = model, train_model, ddp
        self.optimizer, self.scaler = optimizer, scaler
        self.loss, self.mixer, self.mix_generator = loss, mixer, mix_generator
        self.device, self.precision = device, precision
        self.accumulate_steps, self.grad_clip_norm = accumulate_steps, grad_clip_norm
        self.skip_nonfinite, self.max_skipped_steps = nonfinite == "skip", max_skipped_steps
        self.group_nonfinite = False  # a micro-batch of the current accumulation group had a non-finite loss
        self.group, self.group_loss = [], 0.0  # the current group's (images, targets) and mean loss
        self.stepper = ClosureStepper(optimizer)  # what the grad scaler steps (it refuses closures)
        # SAM perturbs along each rank's own gradient: its first pass skips DDP's all-reduce (cifarbench.optim.sam).
        self.first_pass_local = bool(getattr(optimizer, "first_pass_local", False))
        self.extra_passes = 0  # images passed again by the closure since the trainer last took the count
        self.wrapped_trainable = self._trainable()  # which parameters trained when DDP was built

    def _trainable(self) -> tuple[bool, ...]:
        return tuple(param.requires_grad for param in self.model.parameters())

    def trainable_changed(self) -> bool:
        """Under DDP: whether parameters started or stopped training since the wrapper was built."""
        return self.ddp is not None and self._trainable() != self.wrapped_trainable

    def rewrap(self, ddp, train_model) -> None:
        """Train through new DDP/compile wrappers of the same model. The old DDP wrapper's gradient hooks are
        removed when its reducer is freed, so nothing may keep it: collect it now."""
        self.ddp, self.train_model = ddp, train_model
        self.wrapped_trainable = self._trainable()
        gc.collect()

    def at_group_end(self, step_in_epoch: int, steps_in_epoch: int) -> bool:
        return step_in_epoch % self.accumulate_steps == 0 or step_in_epoch == steps_in_epoch

    def is_log_step(self, step_in_epoch: int, steps_in_epoch: int, every_n: int) -> bool:
        """Whether this micro-batch ends the epoch's n-th, 2n-th ... optimizer step, or the epoch: never one inside
        an accumulation group."""
        if step_in_epoch == steps_in_epoch:
            return True
        return step_in_epoch % self.accumulate_steps == 0 and (step_in_epoch // self.accumulate_steps) % every_n == 0

    def _sync(self, all_reduce: bool):
        """Gradients are all-reduced once per optimizer step, by the group's last micro-batch: the others skip DDP's
        sync. no_sync() is a generator-based context manager, which can be entered only once: each `with` gets a
        fresh one."""
        return self.ddp.no_sync() if (self.ddp is not None and not all_reduce) else nullcontext()

    def _forward(self, images, targets, all_reduce: bool):
        with self._sync(all_reduce), autocast(self.device, self.precision):
            logits = self.train_model(images)
            return self.loss(logits, targets, images), logits

    def _backward(self, loss, group_size: int, all_reduce: bool) -> None:
        with self._sync(all_reduce):
            self.scaler.scale(loss / group_size).backward()

    def take_extra_passes(self) -> int:
        count, self.extra_passes = self.extra_passes, 0
        return count

    def _recompute(self, group_size: int):
        """The closure's later calls: the passes of the group's micro-batches again, at the current weights."""
        def recompute():
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            with running_stats_frozen(self.model):
                for index, (images, targets) in enumerate(self.group):
                    last = index == len(self.group) - 1
                    loss, _ = self._forward(images, targets, last)
                    self._backward(loss, group_size, last)
                    total = total + loss.detach() / group_size
                    self.extra_passes += len(images)
            if self.scaler.is_enabled():
                # The scaler unscaled the first pass; gradients of a pass the closure ran are unscaled here.
                inverse = 1.0 / self.scaler.get_scale()
                for group in self.optimizer.param_groups:
                    for param in group["params"]:
                        if param.grad is not None:
                            param.grad.mul_(inverse)
            if self.grad_clip_norm is not None:
                # The gradient the optimizer will step with (SAM's second) is clipped, as the first one was.
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.grad_clip_norm))
            return total
        return recompute

    def __call__(self, images, labels, state, steps_in_epoch: int):
        """Micro-batch `state.step_in_epoch` (1-based) of `steps_in_epoch`.

        Returns (loss, logits, targets, stepped); loss, logits and targets are None for a micro-batch whose loss was
        not finite (nonfinite=skip), and `stepped` says whether an optimizer step was taken.
        """
        micro = (state.step_in_epoch - 1) % self.accumulate_steps  # position inside the accumulation group
        group_size = min(self.accumulate_steps, steps_in_epoch - (state.step_in_epoch - micro) + 1)
        last_micro = self.at_group_end(state.step_in_epoch, steps_in_epoch)
        targets = labels
        if self.mixer is not None and self.mixer.enabled:
            images, targets = self.mixer(images, labels, self.mix_generator)
        # Kept until the group's optimizer step, for an optimizer whose closure runs the passes again.
        self.group.append((images, targets))
        loss, logits = self._forward(images, targets, last_micro and not self.first_pass_local)
        if self.skip_nonfinite and bool(distributed.all_reduce_max((~torch.isfinite(loss.detach())).int())):
            # Opt-in, because this check waits for the device on every step. The whole accumulation group is
            # skipped at its end, so no optimizer step is taken with part of a group's gradient.
            self.group_nonfinite = True
            log.warning("non-finite loss at epoch %d step %d: its optimizer step will be skipped", state.epoch + 1,
                        state.step_in_epoch)
            loss = logits = targets = None
        elif not self.group_nonfinite:
            self._backward(loss, group_size, last_micro and not self.first_pass_local)
            self.group_loss = self.group_loss + loss.detach() / group_size
        if loss is not None:
            loss = self.loss.per_image(loss.detach(), len(labels))  # what the logs show
        if not last_micro:
            return loss, logits, targets, False
        stepped = not self.group_nonfinite
        if self.group_nonfinite:
            self._skip_group(state)
        else:
            stepped = self._optimizer_step(group_size)
            if stepped:
                state.global_step += 1
            else:
                self._skip_group(state, "a non-finite gradient")
        self.group, self.group_loss = [], 0.0
        return loss, logits, targets, stepped

    def _optimizer_step(self, group_size: int) -> bool:
        """unscale -> clip -> step (with the closure) -> scaler update -> zero_grad. False: the optimizer skipped
        the step on its own account (SAM with a non-finite gradient, in bf16 or fp32)."""
        if self.grad_clip_norm is not None or self.first_pass_local:
            # SAM perturbs along the true gradient: unscaled before it sees it.
            self.scaler.unscale_(self.stepper)
        if self.first_pass_local and self.scaler.is_enabled() and self.ddp is not None:
            # Each rank's first gradient is its own, so one rank may overflow alone: all ranks skip together.
            for found_inf in scaler_found_inf(self.scaler, self.stepper):
                distributed.all_reduce_max(found_inf)
        if self.grad_clip_norm is not None and not self.first_pass_local:
            # (SAM steps with the second gradient, which the closure clips; the first one only gives a direction.)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.grad_clip_norm))
        self.stepper.closure = StepClosure(self.group_loss, self._recompute(group_size))
        if hasattr(self.optimizer, "skipped"):
            self.optimizer.skipped = None  # the scaler may not call it at all (an overflow)
        self.scaler.step(self.stepper)
        skipped = getattr(self.optimizer, "skipped", None)
        if skipped and self.scaler.is_enabled():
            # Under the scaler a skipped step is an overflow like any other: the scale backs off.
            for found_inf in scaler_found_inf(self.scaler, self.stepper):
                found_inf.fill_(1.0)
        self.scaler.update()
        self.stepper.closure = None
        self.optimizer.zero_grad(set_to_none=True)
        return not (skipped and not self.scaler.is_enabled())

    def _skip_group(self, state, why: str = "a non-finite loss") -> None:
        self.group_nonfinite = False
        self.optimizer.zero_grad(set_to_none=True)
        state.skipped_steps += 1
        if state.skipped_steps > self.max_skipped_steps:
            raise NonFiniteLossError(
                f"more than trainer.max_skipped_steps={self.max_skipped_steps} steps had {why} (the last "
                f"in epoch {state.epoch + 1}, step {state.step_in_epoch}); lower optimizer.lr or set "
                "trainer.grad_clip_norm"
            )
        log.warning("skipped the optimizer step ending at epoch %d step %d for %s (%d so far)", state.epoch + 1,
                    state.step_in_epoch, why, state.skipped_steps)
