"""Evaluation inside a run, as built-in hooks: the monitored split at the end of the epochs that are due (the trained
model and the callbacks' models), best.pt following it, and the test set once at the end, on the best model."""

from __future__ import annotations

import logging
import math

from torch import nn

from cifarbench import distributed
from cifarbench.checkpoint import load_checkpoint
from cifarbench.engine.hooks import Callback, TrainerView

log = logging.getLogger("cifarbench")


def partial(trainer: TrainerView, split: str, metrics: dict) -> bool:
    """Whether `metrics` saw only part of the split (trainer.limit_eval_batches)."""
    data = getattr(trainer, "data", None)
    return data is not None and "count" in metrics and metrics["count"] < len(getattr(data, split))


def partial_note(trainer: TrainerView, split: str, count: int | None) -> str:
    """What every log line with numbers from part of a split says beside them (one spelling: the epoch line, the
    test line and the run's summary)."""
    if count is None or not partial(trainer, split, {"count": count}):
        return ""
    return (f" (PARTIAL: {count} of {len(getattr(trainer.data, split))} {split} images, "
            f"trainer.limit_eval_batches={trainer.cfg.trainer.limit_eval_batches})")


class EpochEvaluation(Callback):
    """Built in (`trainer.hooks["evaluation"]`): at the end of every `trainer.eval_every_n_epochs`-th epoch, and
    always after the last (0: only then, when time counts), rank 0 evaluates the whole monitored split (exact, no
    padded shards) with the trained model and every model a callback added with `add_model` (EMA's average, as
    <split>_ema/), and each rank's epoch record gets the numbers. After training, `test` evaluates the test set once
    on best.pt's weights, through `test_predict` when a callback sets one (test-time augmentation,
    cifarbench.callbacks.tta)."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = int(every_n_epochs)
        self.models: dict[str, nn.Module] = {}  # evaluated beside the trained model, by name
        self.test_predict = None  # predict(model, images) -> logits for the final test; None: model(images)
        self.test_views = "none"  # what test_predict does, for the log line
        # The last epoch's weights on the test set (plain forward), apart from the selected model's test: a run
        # reports both, so that selection never hides inside one number.
        self.final_test: dict | None = None

    def add_model(self, name: str, model: nn.Module) -> None:
        self.models[name] = model

    def is_due(self, epoch: int, epochs: int) -> bool:
        return epoch == epochs or (self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0)

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if self.is_due(trainer.state.epoch, trainer.epochs):
            record.update(self.evaluate(trainer))

    def evaluate(self, trainer: TrainerView) -> dict:
        split = trainer.monitor_split
        models = {split: trainer.model, **{f"{split}_{name}": model for name, model in self.models.items()}}
        record = {}
        if trainer.runtime.dist.is_main:
            for prefix, model in models.items():
                metrics = trainer.evaluate_split(split, model)
                record.update({f"{prefix}/{k}": metrics[k] for k in ("loss", "acc", "top5")})
                if partial(trainer, split, metrics):  # trainer.limit_eval_batches: say so beside the numbers
                    record[f"{prefix}/images"] = metrics["count"]
        return distributed.broadcast_object(record)

    def test(self, trainer: TrainerView) -> dict | None:
        """The test set, once, on the best model (the last one if none was ever finite, or none was kept); rank 0
        only."""
        if not trainer.runtime.dist.is_main:
            distributed.barrier()
            return None
        self.final_test = self.test_final(trainer)
        best_path = trainer.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            trainer.model.load_state_dict(load_checkpoint(best_path)["model"])
        elif trainer.checkpoints.enabled:
            log.warning("no epoch produced a finite %s; testing the final weights", trainer.monitor)
        test = trainer.evaluate_split("test", predict=self.test_predict)
        test["partial"] = partial(trainer, "test", test)
        where = "the test set itself" if trainer.monitor_split == "test" else f"the {trainer.monitor_split} split"
        log.info("test, selected model (epoch %s, picked on %s, tta %s): loss %.4f acc %.4f top5 %.4f%s",
                 trainer.state.best.get("epoch"), where, self.test_views, test["loss"], test["acc"], test["top5"],
                 partial_note(trainer, "test", test["count"]))
        if self.final_test:
            log.info("test, final model (epoch %d): acc %.4f", trainer.state.epoch, self.final_test["acc"])
        distributed.barrier()
        return test

    def test_final(self, trainer: TrainerView) -> dict | None:
        """The last epoch's weights on the test set: the last record's numbers where the test set is the monitored
        split (evaluated after the last epoch), else one plain evaluation now, before best.pt replaces them."""
        if trainer.monitor_split == "test":
            record = trainer.state.history[-1] if trainer.state.history else {}
            return {k: record[f"test/{k}"] for k in ("loss", "acc", "top5")} if "test/acc" in record else None
        metrics = trainer.evaluate_split("test")
        return {k: metrics[k] for k in ("loss", "acc", "top5")}


class BestCheckpoint(Callback):
    """Built in (`trainer.hooks["best_checkpoint"]`), after the evaluation: best.pt follows the monitored metric
    (`trainer.monitor`), saved from the weights it was measured on (EMA's average when EMA selects). An epoch that
    was not evaluated, or evaluated to NaN, never wins; a tie keeps the earlier epoch. A callback whose model should
    be the one monitored and saved says so with `select()` in its setup (EMA); one with a candidate of its own at the
    end of training (SWA's average) offers it through `update()`."""

    def __init__(self):
        self.selected: tuple[str, nn.Module] | None = None  # (name, model) monitored instead of the trained model

    def select(self, name: str, model: nn.Module) -> None:
        self.selected = (name, model)

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        self.update(trainer, record, self.selected[1] if self.selected else trainer.model)

    def update(self, trainer: TrainerView, record: dict, weights_of: nn.Module) -> None:
        non_finite = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        if non_finite:
            log.warning("epoch %s has non-finite %s; it cannot become best.pt", record.get("epoch"),
                        ", ".join(non_finite))
            return
        best, monitor = trainer.state.best, trainer.monitor
        if monitor not in record or (best and record[monitor] <= best[monitor]):
            return
        trainer.state.best = dict(record)
        trainer.checkpoints.save_best(weights_of, trainer.state.epoch, record)


class LastCheckpoint(Callback):
    """Built in (`trainer.hooks["last_checkpoint"]`), after the callbacks (whose state it saves): last.pt every
    `trainer.checkpoint_every_n_epochs` epochs and after the last. A stop signal saves it mid-epoch too (the loop
    calls `trainer.save_last()` there)."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = int(every_n_epochs)

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        epoch = trainer.state.epoch
        if epoch % self.every_n_epochs == 0 or epoch == trainer.epochs or trainer.stop_reason:
            trainer.save_last()  # a run that a hook ends early ends with its last.pt too
