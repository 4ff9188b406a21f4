"""Pruning inside an Optuna search (`hparams_search=optuna`, cifarbench.cli.optuna_search): the job's side.

The sweeper passes each job its trial number, the study's storage (resolved once, in the sweeper) and name
(`callbacks.optuna.{trial,storage,study_name}`); this callback opens that study with the sweeper's pruner
(`hydra.sweeper.pruner`), reports the monitored metric after every evaluated
epoch, and when the pruner says the trial is unpromising ends the run at that epoch boundary (`request_stop`: last.pt
saved, the selected model tested) and marks metrics.json "pruned", which the sweeper tells the study. Outside a
search (trial null) it does nothing. Only rank 0 talks to the study; the decision is broadcast, so every rank stops at
the same epoch.
"""

from __future__ import annotations

from pathlib import Path

from cifarbench import distributed
from cifarbench.engine.hooks import Callback, TrainerView

PRUNED = "pruned"  # the metrics.json status of a pruned trial


def open_storage(url: str | None):
    """An Optuna storage from its URL: None (in memory), journal:///<file>, or an RDB URL (sqlite:///..., ...)."""
    if url is None:
        return None
    import optuna

    url = str(url)
    if url.startswith("journal://"):
        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


class OptunaPruning(Callback):
    def __init__(self, trial: int | None = None, storage: str | None = None, study_name: str | None = None):
        self.trial_number = None if trial is None else int(trial)
        self.storage_url, self.study_name = storage, study_name
        self.trial = None
        self.pruned = False

    def setup(self, trainer: TrainerView) -> None:
        if self.trial_number is None or not trainer.runtime.dist.is_main:
            return
        import optuna
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import instantiate

        pruner_cfg = HydraConfig.get().sweeper.get("pruner") if HydraConfig.initialized() else None
        pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
        storage = open_storage(self.storage_url)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name),
                                                                   self.trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if self.trial_number is None or self.pruned:
            return
        value = record.get(trainer.monitor)
        prune = False
        if self.trial is not None and value is not None:  # rank 0, an evaluated epoch
            self.trial.report(float(value), step=trainer.state.epoch)
            prune = self.trial.should_prune()
        if distributed.broadcast_object(prune):
            self.pruned = True
            trainer.request_stop(f"Optuna pruned trial {self.trial_number} after epoch {trainer.state.epoch} "
                                 f"({trainer.monitor} {value:.4f})")

    def metrics(self) -> dict:
        return {"status": PRUNED, "optuna_trial": self.trial_number} if self.pruned else (
            {"optuna_trial": self.trial_number} if self.trial_number is not None else {})
