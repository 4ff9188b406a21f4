"""Learning-rate schedule factories.

``conf/scheduler/*.yaml`` are ``_partial_`` configs, so Hydra hands the trainer a partial of one of the factories
below; the trainer completes it with ``factory(optimizer, steps_per_epoch=..., epochs=...)`` and calls
``scheduler.step()`` once after every ``optimizer.step()``. Every schedule is therefore defined per iteration and
fits any run length or batch size; epoch-valued options (``warmup_epochs``, ``milestones``, ``t0_epochs``) are
converted to steps with ``round(epochs * steps_per_epoch)``, so fractional epochs work.

The schedules are torch's own ``LambdaLR`` (with a picklable callable per param group, whose few numbers travel in
the scheduler's ``state_dict``) and ``OneCycleLR``, so ``state_dict()``/``load_state_dict()`` resume exactly.

Warmup: for ``step < W = round(warmup_epochs * steps_per_epoch)`` the LR is
``base_lr * (warmup_start_factor + (1 - warmup_start_factor) * step / W)``, a straight line from
``warmup_start_factor * base_lr`` at the first step to ``base_lr`` at step ``W``, where the main schedule takes
over. The cosine and restart schedules start their own clock after the warmup; multistep milestones are absolute.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from cifarbench.errors import ConfigError

DEFAULT_WARMUP_START_FACTOR = 0.01  # not 0: a first step at LR 0 would be wasted


def _epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return round(epochs * steps_per_epoch)


def _total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Steps of the whole run; a fractional last epoch stops part way (ceil, as the trainer counts them)."""
    return math.ceil(epochs * steps_per_epoch)


def _check_run(steps_per_epoch: int, epochs: float, warmup_epochs: float, warmup_start_factor: float) -> None:
    if steps_per_epoch < 1:
        raise ConfigError(f"scheduler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if epochs <= 0:
        raise ConfigError(f"scheduler: epochs must be > 0, got {epochs}")
    if not 0 <= warmup_epochs <= epochs:
        raise ConfigError(f"scheduler.warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    if not 0.0 <= warmup_start_factor <= 1.0:
        raise ConfigError(f"scheduler.warmup_start_factor must be in [0, 1], got {warmup_start_factor}")


def _group_totals(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: float) -> list[int]:
    """Each param group's schedule length in steps: the run's, or its own `schedule_epochs`
    (cifarbench.optim.param_groups), after which the group holds the schedule's last value."""
    return [_total_steps(float(group.get("schedule_epochs") or epochs), steps_per_epoch)
            for group in optimizer.param_groups]


def _refuse_group_lengths(optimizer: torch.optim.Optimizer, scheduler: str) -> None:
    named = [str(group.get("name")) for group in optimizer.param_groups if group.get("schedule_epochs")]
    if named:
        raise ConfigError(f"param_groups {', '.join(named)} set schedule_epochs, which scheduler={scheduler} does not "
                          "support; use scheduler=piecewise_linear or cosine")


def _base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    # 'initial_lr' is what LambdaLR multiplies; it is already set when another scheduler was built before.
    return [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]


def _min_factor(min_lr: float, base_lr: float) -> float:
    # min_lr is an absolute LR; LambdaLR wants a factor of each group's own base LR.
    return min_lr / base_lr if base_lr > 0 else 0.0


def _cosine(progress: float) -> float:
    """1 -> 0 along half a cosine as progress goes 0 -> 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _Warmup:
    """LR factor for one param group: linear warmup, then ``self.main(step)``.

    A class, not a closure, so LambdaLR stores its attributes in ``state_dict`` and resume restores them.
    """

    def __init__(self, warmup_steps: int, start_factor: float) -> None:
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return self.main(step)

    def main(self, step: int) -> float:
        return 1.0


class _Cosine(_Warmup):
    def __init__(self, warmup_steps: int, start_factor: float, total_steps: int, min_factor: float) -> None:
        super().__init__(warmup_steps, start_factor)
        self.total_steps = total_steps
        self.min_factor = min_factor

    def main(self, step: int) -> float:
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = (step - self.warmup_steps) / span
        return self.min_factor + (1.0 - self.min_factor) * _cosine(progress)


class _MultiStep(_Warmup):
    def __init__(
        self, warmup_steps: int, start_factor: float, milestone_steps: list[int], gamma: float
    ) -> None:
        super().__init__(warmup_steps, start_factor)
        self.milestone_steps = milestone_steps
        self.gamma = gamma

    def main(self, step: int) -> float:
        passed = sum(1 for milestone in self.milestone_steps if step >= milestone)
        return self.gamma**passed


class _CosineRestarts(_Warmup):
    def __init__(
        self, warmup_steps: int, start_factor: float, cycle_steps: int, t_mult: float, min_factor: float
    ) -> None:
        super().__init__(warmup_steps, start_factor)
        self.cycle_steps = cycle_steps
        self.t_mult = t_mult
        self.min_factor = min_factor

    def main(self, step: int) -> float:
        position, length = float(step - self.warmup_steps), float(self.cycle_steps)
        if self.t_mult == 1.0:
            position %= length
        else:
            # Cycles grow geometrically, so this loop runs about log(run / t0) / log(t_mult) times.
            while position >= length:
                position -= length
                length *= self.t_mult
        return self.min_factor + (1.0 - self.min_factor) * _cosine(position / length)


class _PiecewiseLinear:
    """LR factor interpolated linearly between (step, factor) knots, held at the end values outside them."""

    def __init__(self, steps: list[int], factors: list[float]) -> None:
        self.steps = steps
        self.factors = factors

    def __call__(self, step: int) -> float:
        if step <= self.steps[0]:
            return self.factors[0]
        for (x0, y0), (x1, y1) in zip(zip(self.steps, self.factors), zip(self.steps[1:], self.factors[1:])):
            if step <= x1:
                return y0 + (y1 - y0) * (step - x0) / (x1 - x0) if x1 > x0 else y1
        return self.factors[-1]


def piecewise_linear(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    knots: list[list[float]],
) -> LambdaLR:
    """The optimizer's lr times a piecewise-linear factor: ``knots`` are ``[fraction of training, factor]`` pairs,
    the first at fraction 0 and the last at 1, placed at step ``int(fraction * total_steps)`` (airbench's
    "triangle": ``[[0, 0.2], [0.23, 1.0], [1, 0.07]]``)."""
    _check_run(steps_per_epoch, epochs, 0.0, 0.0)
    pairs = [(float(fraction), float(factor)) for fraction, factor in knots]
    fractions = [fraction for fraction, _ in pairs]
    if len(pairs) < 2 or fractions[0] != 0.0 or fractions[-1] != 1.0 or fractions != sorted(fractions):
        raise ConfigError(
            f"scheduler.knots={[list(p) for p in pairs]} must be [fraction, factor] pairs with fractions rising "
            "from 0 to 1, e.g. [[0, 0.2], [0.23, 1.0], [1, 0.07]]"
        )
    factors = [factor for _, factor in pairs]
    lambdas = [_PiecewiseLinear([int(fraction * total) for fraction in fractions], factors)
               for total in _group_totals(optimizer, steps_per_epoch, epochs)]
    return LambdaLR(optimizer, lambdas)


def constant(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = DEFAULT_WARMUP_START_FACTOR,
) -> LambdaLR:
    """The optimizer's LR throughout, after an optional linear warmup."""
    _check_run(steps_per_epoch, epochs, warmup_epochs, warmup_start_factor)
    _refuse_group_lengths(optimizer, "constant")
    warmup = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    lambdas = [_Warmup(warmup, warmup_start_factor) for _ in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)


def cosine(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = DEFAULT_WARMUP_START_FACTOR,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then half a cosine from each group's LR down to ``min_lr`` at the end of the run."""
    _check_run(steps_per_epoch, epochs, warmup_epochs, warmup_start_factor)
    if min_lr < 0:
        raise ConfigError(f"scheduler.min_lr must be >= 0, got {min_lr}")
    warmup = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    lambdas = [
        _Cosine(warmup, warmup_start_factor, total, _min_factor(min_lr, lr))
        for lr, total in zip(_base_lrs(optimizer), _group_totals(optimizer, steps_per_epoch, epochs))
    ]
    return LambdaLR(optimizer, lambdas)


def multistep(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    milestones: list[float],
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = DEFAULT_WARMUP_START_FACTOR,
) -> LambdaLR:
    """LR multiplied by ``gamma`` once ``milestone`` epochs have been completed, for each milestone.

    With milestones [60, 120, 160] the LR of the 61st epoch (the first step after 60 full epochs) is already
    ``gamma * lr``, as with torch's MultiStepLR stepped per epoch.
    """
    _check_run(steps_per_epoch, epochs, warmup_epochs, warmup_start_factor)
    _refuse_group_lengths(optimizer, "multistep")
    if gamma <= 0:
        raise ConfigError(f"scheduler.gamma must be > 0, got {gamma}")
    milestones = list(milestones)
    if any(m <= 0 for m in milestones) or milestones != sorted(milestones):
        raise ConfigError(
            f"scheduler.milestones must be positive epochs in increasing order, got {milestones}"
        )
    warmup = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    steps = [_epochs_to_steps(m, steps_per_epoch) for m in milestones]
    lambdas = [_MultiStep(warmup, warmup_start_factor, list(steps), gamma) for _ in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)


def cosine_restarts(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    t0_epochs: float,
    t_mult: float = 1.0,
    min_lr: float = 0.0,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = DEFAULT_WARMUP_START_FACTOR,
) -> LambdaLR:
    """SGDR (Loshchilov & Hutter, 2017): cosine cycles from each group's LR to ``min_lr``, restarting at the top.

    The first cycle lasts ``t0_epochs`` (counted after the warmup), each next one ``t_mult`` times longer.
    """
    _check_run(steps_per_epoch, epochs, warmup_epochs, warmup_start_factor)
    _refuse_group_lengths(optimizer, "cosine_restarts")
    if t0_epochs <= 0:
        raise ConfigError(f"scheduler.t0_epochs must be > 0, got {t0_epochs}")
    if t_mult < 1:
        raise ConfigError(f"scheduler.t_mult must be >= 1, got {t_mult}")
    if min_lr < 0:
        raise ConfigError(f"scheduler.min_lr must be >= 0, got {min_lr}")
    warmup = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    cycle = max(_epochs_to_steps(t0_epochs, steps_per_epoch), 1)
    lambdas = [
        _CosineRestarts(warmup, warmup_start_factor, cycle, float(t_mult), _min_factor(min_lr, lr))
        for lr in _base_lrs(optimizer)
    ]
    return LambdaLR(optimizer, lambdas)


def onecycle(
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: float,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    warmup_epochs: float | None = None,
    warmup_start_factor: float | None = None,
) -> OneCycleLR:
    """torch's ``OneCycleLR`` over ``epochs * steps_per_epoch`` steps.

    The rise from ``max_lr / div_factor`` to ``max_lr`` is OneCycle's warmup (shaped by ``anneal_strategy``, so
    cosine rather than linear by default); the peak is at step ``pct_start * total - 1``. For a uniform interface:
    ``warmup_epochs``, if given, sets ``pct_start = warmup_epochs / epochs``, and ``warmup_start_factor``, if
    given, sets ``div_factor = 1 / warmup_start_factor``. ``max_lr=None`` uses each param group's configured LR.
    OneCycleLR raises if stepped more than ``epochs * steps_per_epoch`` times, and by default it also cycles
    momentum (SGD) or beta1 (Adam/AdamW) between ``max_momentum`` and ``base_momentum``.
    """
    _check_run(steps_per_epoch, epochs, warmup_epochs or 0.0, warmup_start_factor or 0.0)
    _refuse_group_lengths(optimizer, "onecycle")
    if warmup_epochs is not None:
        pct_start = warmup_epochs / epochs
    if warmup_start_factor is not None:
        if warmup_start_factor <= 0:
            raise ConfigError(
                f"scheduler.warmup_start_factor must be > 0 for onecycle, got {warmup_start_factor}"
            )
        div_factor = 1.0 / warmup_start_factor
    if not 0.0 < pct_start < 1.0:
        raise ConfigError(
            f"scheduler.pct_start (or warmup_epochs / epochs) must be in (0, 1), got {pct_start}"
        )
    if anneal_strategy not in ("cos", "linear"):
        raise ConfigError(f"scheduler.anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    if max_lr is None:
        max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=_total_steps(epochs, steps_per_epoch),
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def continue_at(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> list[float]:
    """Put a freshly built schedule at `step` (as if it had been stepped that many times) and set the optimizer's
    learning rates from it: how a run extended to more epochs continues on the schedule of its new length."""
    import warnings

    if hasattr(scheduler, "schedulers"):  # a SchedulerSet: one schedule per optimizer
        return [rate for member in scheduler.schedulers.values() for rate in continue_at(member, step)]
    scheduler.last_epoch = step
    with warnings.catch_warnings():
        # get_lr() outside step() warns; here it is the documented closed form at last_epoch, which is wanted.
        warnings.simplefilter("ignore", UserWarning)
        rates = scheduler.get_lr()
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return scheduler._last_lr
