"""Several optimizers in one run (airbench94_muon: SGD for biases and the head, Muon for the conv filters).

The run's `optimizer` takes every parameter that no rule of `param_groups` sends elsewhere; each entry of
`optimizers` is another one, with its own schedule:

    optimizers:
      muon:
        optimizer: {_target_: cifarbench.optim.muon.Muon, _partial_: true, lr: 0.24, momentum: 0.6}
        scheduler: null          # null or absent: the run's `scheduler`, built for this optimizer
    param_groups:
      conv_filters: {ndim: 4, optimizer: muon}

`OptimizerSet` and `SchedulerSet` step, zero and checkpoint them together, so the step, the grad scaler, the
freezing windows and last.pt treat a set as one optimizer and one schedule. Their state dicts are keyed by name
("optimizer", then the `optimizers` entries).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cifarbench.errors import CheckpointError


class OptimizerSet:
    """Named optimizers that step as one; `param_groups` lists every group of all of them, in order."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self, closure=None):
        """Each optimizer steps on the step's gradients; a StepClosure (cifarbench.optim.closure) gives each one its
        own view, whose first call is free."""
        for optimizer in self.optimizers.values():
            optimizer.step(closure.another() if closure is not None else None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        _check_names(self.optimizers, state, "optimizers")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


class SchedulerSet:
    """One schedule per optimizer of an OptimizerSet, stepped together."""

    def __init__(self, optimizer: OptimizerSet, schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler]):
        self.optimizer, self.schedulers = optimizer, dict(schedulers)

    @property
    def last_epoch(self) -> int:
        return next(iter(self.schedulers.values())).last_epoch

    def step(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        return [lr for scheduler in self.schedulers.values() for lr in scheduler.get_last_lr()]

    def state_dict(self) -> dict:
        # "last_epoch" at the top, as a single scheduler has it: an extended resume reads where the run was.
        return {"last_epoch": self.last_epoch, **{name: s.state_dict() for name, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        _check_names(self.schedulers, {k: v for k, v in state.items() if k != "last_epoch"}, "schedules")
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state[name])


def _check_names(ours: Mapping, saved: Mapping, what: str) -> None:
    if sorted(ours) != sorted(saved):
        raise CheckpointError(f"the checkpoint holds the {what} [{', '.join(sorted(saved))}] and this run has "
                              f"[{', '.join(sorted(ours))}]; resume with the optimizers it was saved with")


def learning_rates(optimizer) -> dict:
    """The lr of the first param group as `lr`, and with several groups each one's as `lr/<group name>`."""
    groups = optimizer.param_groups
    rates = {"lr": groups[0]["lr"]}
    if len(groups) > 1:
        rates.update({f"lr/{group.get('name', index)}": group["lr"] for index, group in enumerate(groups)})
    return rates
