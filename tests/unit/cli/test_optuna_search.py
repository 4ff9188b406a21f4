"""cifarbench.cli.optuna_search and the Optuna sweeper's pieces: search spaces from Hydra's sweep syntax, how a job's
end becomes a trial state, the storages jobs share, and the refusal of pruning without one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from cifarbench.errors import ConfigError
from tests.helpers.cli import cli
from tests.helpers.sweep import needs_optuna

pytestmark = needs_optuna


def test_search_space_from_the_command_line_and_params():
    import optuna.distributions as dist

    from cifarbench.cli.optuna_search import search_space

    fixed, space = search_space(
        ["model=resnet20", "optimizer.lr=tag(log, interval(1e-4, 1e-2))", "trainer.batch_size=choice(64,128)"],
        {"optimizer.lr": "interval(0.1, 0.5)", "loss.label_smoothing": "interval(0.0, 0.2)",
         "augment.cutout.length": "range(0, 24, 8)", "trainer.epochs": "int(interval(5, 10))"})
    assert fixed == ["model=resnet20"]
    assert space["optimizer.lr"] == dist.FloatDistribution(1e-4, 1e-2, log=True)  # the command line wins
    assert space["trainer.batch_size"] == dist.CategoricalDistribution([64, 128])
    assert space["loss.label_smoothing"] == dist.FloatDistribution(0.0, 0.2)
    assert space["augment.cutout.length"] == dist.CategoricalDistribution([0, 8, 16])
    assert space["trainer.epochs"] == dist.IntDistribution(5, 10)


def test_trial_values_become_overrides_that_hydra_reads_back():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cifarbench.cli.optuna_search import override_value

    values = {"a": 0.1234567890123, "b": 3, "c": True, "d": "resnet20", "e": "sqlite:////tmp/x y.db", "f": 1e-05}
    parsed = OverridesParser.create().parse_overrides([f"{k}={override_value(v)}" for k, v in values.items()])
    assert {override.key_or_group: override.value() for override in parsed} == values


def job(status: str | None, value, tmp_path, completed: bool = True):
    from hydra.core.utils import JobReturn, JobStatus

    run_dir = tmp_path / f"run_{status}_{value}"
    run_dir.mkdir()
    if status is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
    ret = JobReturn(hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}}))
    ret.status = JobStatus.COMPLETED if completed else JobStatus.FAILED
    ret.return_value = value if completed else RuntimeError("killed")
    return ret


def test_a_jobs_end_becomes_the_trials_state(tmp_path):
    from cifarbench.cli.optuna_search import trial_outcome

    assert trial_outcome(job("completed", 0.91, tmp_path)) == ("complete", 0.91)
    assert trial_outcome(job("pruned", 0.42, tmp_path)) == ("pruned", None)
    assert trial_outcome(job("failed", float("-inf"), tmp_path)) == ("fail", None)  # never a value
    assert trial_outcome(job(None, 0.5, tmp_path)) == ("fail", None)  # died before metrics.json
    assert trial_outcome(job("completed", None, tmp_path, completed=False)) == ("fail", None)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_study_in_a_shared_storage_is_seen_by_a_second_opener(kind, tmp_path):
    """What the jobs do: open the storage the sweeper created by its URL, find their trial by number, report."""
    import optuna

    from cifarbench.callbacks.optuna_pruning import open_storage

    url = f"sqlite:///{tmp_path}/db/optuna.db" if kind == "sqlite" else f"journal://{tmp_path}/journal/study.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = study.ask()
    storage = open_storage(url)  # another opener, as a job process is
    seen = optuna.load_study(study_name="s", storage=storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    optuna.trial.Trial(seen, trial_id).report(0.5, step=1)
    assert study.trials[0].intermediate_values == {1: 0.5}


def test_pruning_without_a_storage_the_jobs_share_is_one_line(tmp_path):
    done = cli("cifarbench.train", ["hparams_search=optuna", "hydra.sweeper.storage=null", "dataset=synthetic",
                                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert done.returncode != 0
    assert "hydra.sweeper.storage=null keeps the Optuna study in the sweeper's memory" in done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "sweep").glob("trial_*"))


def test_the_pruning_callback_stops_the_run_and_marks_it_pruned():
    from cifarbench.callbacks.optuna_pruning import OptunaPruning

    stops = []
    trainer = SimpleNamespace(monitor="val/acc", state=SimpleNamespace(epoch=2),
                              request_stop=stops.append, runtime=SimpleNamespace(dist=SimpleNamespace(is_main=True)))
    reported = []
    callback = OptunaPruning(trial=7, storage="sqlite:///unused.db", study_name="s")
    callback.trial = SimpleNamespace(report=lambda value, step: reported.append((value, step)),
                                     should_prune=lambda: True)
    callback.on_epoch_end(trainer, {"epoch": 2})  # not evaluated: nothing to report, no decision
    assert reported == [] and stops == [] and callback.metrics() == {"optuna_trial": 7}
    callback.on_epoch_end(trainer, {"epoch": 2, "val/acc": 0.25})
    assert reported == [(0.25, 2)] and "Optuna pruned trial 7 after epoch 2" in stops[0]
    assert callback.metrics() == {"status": "pruned", "optuna_trial": 7}
    with pytest.raises(ConfigError):
        from cifarbench.cli.optuna_search import check_shared_storage

        check_shared_storage(None, __import__("optuna").pruners.MedianPruner())
