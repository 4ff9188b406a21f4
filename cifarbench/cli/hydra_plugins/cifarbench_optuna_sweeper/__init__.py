"""cifarbench's Optuna sweeper for Hydra (`hydra/sweeper=cifarbench_optuna`, selected by `hparams_search=optuna`).

It lives below the `hydra_plugins` namespace because Hydra only finds sweepers there (pyproject.toml maps this folder,
cifarbench/cli/hydra_plugins/, onto that namespace). It replaces hydra-optuna-sweeper, which pins optuna < 3: its
SQL storage breaks under SQLAlchemy 2, it has no journal storage, and its trials can't be pruned (the job has no
channel back to the study). Here the study is in a storage the jobs share, created with its pruner when the sweep
starts; each job loads it by name and reports to its own trial (see cifarbench.cli.optuna_search).
"""


import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cifarbench")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.cifarbench_optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "cifarbench"
    storage: Any = "sqlite:///${hydra.sweep.dir}/optuna.db"
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: Any = None
    params: Any = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="cifarbench_optuna", node=OptunaSweeperConf,
                             provider="cifarbench")


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: str, storage: str | None, n_trials: int, n_jobs: int,
                 sampler: Any, pruner: Any, params: Any):
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.config = None  # the sweep's whole config (setup)
        self.hydra_context = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def create_study(self):
        import optuna

        from cifarbench.callbacks.optuna_pruning import open_storage
        from cifarbench.cli.optuna_search import built, check_shared_storage

        # Hydra builds the sampler and pruner nodes before it hands them over (recursive instantiation).
        sampler, pruner = built(self.sampler_cfg), built(self.pruner_cfg) or optuna.pruners.NopPruner()
        check_shared_storage(self.storage, pruner)
        return optuna.create_study(study_name=self.study_name, storage=open_storage(self.storage), sampler=sampler,
                                   pruner=pruner, direction=self.direction, load_if_exists=True)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from cifarbench.cli.optuna_search import job_overrides, override_value, search_space, trial_outcome
        from cifarbench.errors import EXIT_USER_ERROR, CifarbenchError

        try:
            fixed, space = search_space(list(arguments), self.params)
            study = self.create_study()
        except CifarbenchError as error:  # one line, not Hydra's traceback: nothing has run yet
            print(f"cifarbench: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        # Jobs report to their trial through the `optuna` callback (hparams_search=optuna adds it); an app without
        # it gets no trial overrides, and then nothing can be pruned.
        reporting = OmegaConf.select(self.config, "callbacks.optuna") is not None
        if not reporting and not isinstance(study.pruner, optuna.pruners.NopPruner):
            log.warning("the jobs have no callbacks.optuna to report to their trials: nothing will be pruned")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna study %r in %s: %d trials, %d at a time, pruner %s", self.study_name, self.storage,
                 self.n_trials, self.n_jobs, type(study.pruner).__name__)
        states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                  "fail": optuna.trial.TrialState.FAIL}
        done = 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed, *(f"{name}={override_value(value)}" for name, value in trial.params.items()),
                      *(job_overrides(trial.number, self.storage, self.study_name) if reporting else [])]
                     for trial in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=done)
            for trial, job_return in zip(trials, returns):
                outcome, value = trial_outcome(job_return)
                study.tell(trial, value, state=states[outcome])
                log.info("trial %d: %s%s", trial.number, outcome, f" {value:.4f}" if value is not None else "")
            done += len(trials)
        self.write_results(study, sweep_dir)

    def write_results(self, study, sweep_dir: Path) -> None:
        import optuna

        counts = {state.name.lower(): len(study.get_trials(states=(state,))) for state in
                  (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)}
        results: dict[str, Any] = {"name": "optuna", "study_name": self.study_name, "storage": self.storage,
                                   "trials": counts}
        if counts["complete"]:
            results.update(best_params=study.best_params, best_value=study.best_value,
                           best_trial=study.best_trial.number)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("Optuna: %s; results in %s", counts, sweep_dir / "optimization_results.yaml")
