"""Evaluation inside a run: the monitored split after every epoch (the trained model and the callbacks' models),
and the test set once at the end, on the best model."""

from __future__ import annotations

import logging
from typing import Any

from cifarbench import distributed
from cifarbench.checkpoint import load_checkpoint

log = logging.getLogger("cifarbench")


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
