"""Evaluation inside a run: the monitored split after every epoch (the trained model and the callbacks' models),
and the test set once at the end, on the best model."""

from __future__ import annotations

import logging
import math
from typing import Any

from cifarbench import distributed
from cifarbench.checkpoint import load_checkpoint

log = logging.getLogger("cifarbench")


def evaluates_epoch(trainer: Any, epoch: int) -> bool:
    """trainer.eval_every_n_epochs: 0 evaluates only after the last epoch; the last one is always evaluated."""
    every = int(trainer.cfg.trainer.get("eval_every_n_epochs", 1))
    return epoch == trainer.epochs or (every > 0 and epoch % every == 0)


def update_best(trainer: Any, record: dict, weights_of) -> None:
    """best.pt follows the monitored metric; an epoch that was not evaluated, or evaluated to NaN, never wins."""
    non_finite = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
    if non_finite:
        log.warning("epoch %s has non-finite %s; it cannot become best.pt", record.get("epoch"), ", ".join(non_finite))
        return
    best, monitor = trainer.state.best, trainer.monitor
    if monitor not in record or (best and record[monitor] <= best[monitor]):
        return
    trainer.state.best = dict(record)
    trainer.checkpoints.save_best(weights_of, trainer.state.epoch, record)


def evaluate_epoch(trainer: Any) -> dict:
    """Rank 0 evaluates the whole split (exact, no padded shards) and shares the numbers with the others; the
    callbacks' models (EMA) are evaluated beside the trained one."""
    split = trainer.monitor_split
    models = {split: trainer.model}
    for callback in trainer.callbacks.values():
        models |= {f"{split}_{name}": model for name, model in callback.eval_models().items()}
    record = {}
    if trainer.runtime.dist.is_main:
        for prefix, model in models.items():
            metrics = trainer.evaluate_split(split, model)
            record.update({f"{prefix}/{k}": metrics[k] for k in ("loss", "acc", "top5")})
    return distributed.broadcast_object(record)


def test_best(trainer: Any) -> dict | None:
    """Evaluate the test set once, on the best model (the last one if none was ever finite, or none was kept);
    rank 0 only."""
    if not trainer.runtime.dist.is_main:
        distributed.barrier()
        return None
    best_path = trainer.run_dir / "checkpoints" / "best.pt"
    if best_path.is_file():
        trainer.model.load_state_dict(load_checkpoint(best_path)["model"])
    elif trainer.checkpoints.enabled:
        log.warning("no epoch produced a finite %s; testing the final weights", trainer.monitor)
    tta = str(trainer.cfg.trainer.tta)
    test = trainer.evaluate_split("test", tta=tta)
    log.info("test (best model, epoch %s, tta %s): loss %.4f acc %.4f top5 %.4f",
             trainer.state.best.get("epoch"), tta, test["loss"], test["acc"], test["top5"])
    distributed.barrier()
    return test
