"""The two contenders of the overhead and airbench sections (and the trainer side of imagefolder).

- `run_trainer`: the real cifarbench Trainer, built from the composed config and fit(), with the log file Hydra's job
  logging would write. Its epochs' training passes are timed by `EpochTimer`, an ordinary training callback added to
  the run's `callbacks`: it synchronises the device and starts its clock in on_epoch_start (the last hook before the
  epoch's steps, as it is added after every other callback) and stops it in on_train_epoch_end (right after them).
- `run_bare`: the loop a user would write by hand for the same config, one loop for every run: the same DeviceLoader
  batches (augmentation, shuffling), model (and data-dependent init, such as airbench's whitening), parameter groups,
  optimizers (SGD, and Muon for airbench94_muon) and their per-step schedules, the configured loss reduction and label
  smoothing under the same autocast, the training windows (the whitening bias frozen after epoch 3), and lookahead
  where the run has it; with test=True the final (TTA) test as well. No logging, checkpoints, evaluation between
  epochs or callbacks.

Either side can also count the work of its training passes after the first epoch (`count_work=True`, `WorkCount`):
the FLOPs of torch.utils.flop_counter and every aten call dispatched, per step. Equal FLOPs say the trainer runs no
extra model pass, and the calls it adds per step bound its overhead, whatever a busy machine does to the clock. The
first epoch is left out on both sides: it holds one-off work (the trainer's TensorBoard image grid at step 1).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.common import compose, stopwatch
from cifarbench.device import autocast, resolve_precision, synchronize
from cifarbench.engine.hooks import Callback

TIMER = "bench_epoch_timer"  # the timing callback's name in cfg.callbacks


class WorkCount(TorchDispatchMode):
    """The work done inside it, summed over every time it is entered: `flop` (matrix products and convolutions, as
    torch.utils.flop_counter counts them, forward and backward) and `calls` (aten operators dispatched, each
    elementwise op, copy and reduction included); `steps`, the training steps they came from, is the caller's to
    add."""

    def __init__(self):
        super().__init__()
        self.flop = 0
        self.calls = 0
        self.steps = 0
        self._flops: FlopCounterMode | None = None

    def per_step(self) -> dict:
        return {"steps": self.steps, "flop": self.flop / self.steps, "calls": self.calls / self.steps}

    def __enter__(self):
        self._flops = FlopCounterMode(display=False)
        self._flops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._flops.__exit__(*exc)
        self.flop += self._flops.get_total_flops()
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


class EpochTimer(Callback):
    """Wall time of each epoch's training pass: from on_epoch_start (just before the steps) to on_train_epoch_end
    (just after them), the device synchronised at both ends; with count_work, the work of every pass after the first
    (`work`, its steps the micro-batches, as the bare loop counts them). Evaluation, checkpoints and logging between
    epochs are outside it."""

    def __init__(self, count_work: bool = False):
        self.epoch_s: list[float] = []
        self.started: float | None = None
        self.work = WorkCount() if count_work else None
        self.counting = False

    def on_epoch_start(self, trainer) -> None:
        synchronize(trainer.device)
        self.started = time.perf_counter()
        if self.work is not None and trainer.state.epoch > 0:
            self.counting = True
            self.work.__enter__()

    def on_train_batch_end(self, trainer, batch) -> None:
        if self.counting:
            self.work.steps += 1

    def on_train_epoch_end(self, trainer) -> None:
        self.stop_counting()
        synchronize(trainer.device)
        self.epoch_s.append(time.perf_counter() - self.started)

    def on_interrupt(self, trainer, error) -> None:
        self.stop_counting()  # no dispatch mode left on after the run

    def stop_counting(self) -> None:
        if self.counting:
            self.work.__exit__(None, None, None)
            self.counting = False


def run_trainer(overrides: list[str], model_name: str, device: torch.device, work_dir: Path,
                count_work: bool = False) -> dict:
    from omegaconf import OmegaConf, open_dict

    from cifarbench.engine.trainer import Trainer

    cfg = compose(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="trainer_", dir=work_dir))
    with open_dict(cfg):
        cfg.paths.output_dir = str(work_dir)
        cfg.paths.data_dir = str(work_dir / "data")
        if cfg.get("callbacks") is None:
            cfg.callbacks = {}
        cfg.callbacks[TIMER] = {"_target_": f"{EpochTimer.__module__}.{EpochTimer.__qualname__}",
                                "count_work": count_work}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # The log file Hydra's job logging would write, so the trainer's log calls cost what they do in a real run.
    logger = logging.getLogger("cifarbench")
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        choices = {"model": model_name, "dataset": "synthetic"}
        trainer = Trainer(cfg, run_dir, {"overrides": overrides, "choices": choices})
        fit_wall: list[float] = []
        with stopwatch(device, fit_wall):
            result = trainer.fit()
        images_per_epoch = trainer.state.train_samples // max(trainer.state.epoch, 1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()
    timer = trainer.callbacks[TIMER]
    epoch_times = timer.epoch_s
    return {
        **(timer.work.per_step() if timer.work else {}),
        "epoch_s": epoch_times,
        "images_per_epoch": images_per_epoch,
        "fit_wall_s": fit_wall[0],
        "trainer_epoch_s": [h["time/epoch_s"] for h in result["history"]],
        # fit() minus the training passes: per-epoch eval, checkpoints, TensorBoard/metrics.json, final test.
        "outside_training_s": fit_wall[0] - sum(epoch_times),
        "bars_shown": trainer.log.show_bars,
    }


def build_optimizers(cfg, model: torch.nn.Module) -> list[torch.optim.Optimizer]:
    """The run's optimizers over its parameter groups, as written by hand: one optimizer (all parameters in one group
    for a config without param_groups), or one per entry of `optimizers` besides the run's own."""
    from omegaconf import OmegaConf

    from cifarbench.config import build
    from cifarbench.optim.param_groups import MAIN, build_param_groups

    extras = {name: entry.optimizer for name, entry in (cfg.get("optimizers") or {}).items()}
    groups = build_param_groups(model, OmegaConf.to_container(cfg.param_groups), lr=float(cfg.optimizer.lr),
                                weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
                                optimizers={name: (float(node.lr), float(node.get("weight_decay", 0.0)))
                                            for name, node in extras.items()})
    return [build(node)([g for g in groups if g["optimizer"] == name])
            for name, node in {MAIN: cfg.optimizer, **extras}.items()]


def run_bare(overrides: list[str], device: torch.device, test: bool = False, count_work: bool = False) -> dict:
    """The run of `overrides` as a hand-written loop (see the module docstring); every epoch timed, synchronised, and
    the whole run timed from after composing the config to the end (of the test, with test=True)."""
    from cifarbench.callbacks.tta import selective_tta
    from cifarbench.config import build
    from cifarbench.data.loaders import build_loaders
    from cifarbench.device import memory_format
    from cifarbench.engine.metrics import evaluate
    from cifarbench.engine.setup import build_data, init_from_data
    from cifarbench.optim.param_groups import apply_training_windows

    cfg = compose(overrides)
    t = cfg.trainer
    synchronize(device)
    started = time.perf_counter()
    torch.manual_seed(int(t.seed))
    data = build_data(cfg.dataset, int(t.seed))
    loaders = build_loaders(cfg, data, device, splits=("train", "test") if test else ("train",))
    model = build(cfg.model).to(device, memory_format=memory_format(t.channels_last))
    init_from_data(model, data, device)
    optimizers = build_optimizers(cfg, model)
    steps_per_epoch = len(loaders.train)
    total = math.ceil(float(t.epochs) * steps_per_epoch)
    schedulers = [build(cfg.scheduler)(optimizer, steps_per_epoch=steps_per_epoch, epochs=float(t.epochs))
                  for optimizer in optimizers]
    callbacks = cfg.get("callbacks") or {}
    tta = callbacks.get("tta")
    lookahead = build(callbacks.lookahead) if callbacks.get("lookahead") is not None else None
    if lookahead is not None:
        lookahead.total_steps = total
        lookahead.average = {k: v.detach().clone() for k, v in model.state_dict().items()}
    smoothing, reduction = float(cfg.loss.get("label_smoothing", 0.0)), str(cfg.loss.get("reduction", "mean"))
    precision = resolve_precision(device, t.precision)[0]  # `auto` (the airbench recipes) as the trainer resolves it
    epoch_times: list[float] = []
    seen: list[int] = []
    step = 0
    work = WorkCount() if count_work else None
    for number in range(1, math.ceil(float(t.epochs)) + 1):
        counted = work if work is not None and number > 1 else contextlib.nullcontext()
        with stopwatch(device, epoch_times), counted:
            model.train()
            for optimizer in optimizers:
                apply_training_windows(optimizer, number - 1)
            loaders.train.set_epoch(number)
            count = 0
            for images, labels in itertools.islice(loaders.train, min(steps_per_epoch, total - step)):
                with autocast(device, precision):
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction=reduction)
                loss.backward()
                for optimizer, scheduler in zip(optimizers, schedulers):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                step += 1
                if lookahead is not None and step % lookahead.every == 0:
                    lookahead.update(model, lookahead.decay(step))
                if lookahead is not None and step >= total:
                    lookahead.update(model, 1.0)
                count += len(labels)
                if counted is work:
                    work.steps += 1
        seen.append(count)
    result = {"epoch_s": epoch_times, "images": seen, "images_per_epoch": sum(seen) // len(seen),
              "batch_size": int(t.batch_size)}
    if work is not None:
        result.update(work.per_step())
    if test:
        # The predictor the trainer's tta callback uses, so both sides test alike.
        predict = selective_tta(tta.mode, tta.translate_px, tta.get("below_confidence")) if tta else None
        result["test_acc"] = evaluate(model, loaders.test, num_classes=data.num_classes, device=device,
                                      precision=precision, predict=predict)["acc"]
    synchronize(device)
    result["run_wall_s"] = time.perf_counter() - started
    return result
