"""Optuna searches as a Hydra sweeper (hydra_plugins.cifarbench_optuna_sweeper, `hparams_search=optuna`): the
pieces that sweeper and its jobs share.

The study lives in a storage every job can open: SQLite by default (`sqlite:///<sweep dir>/optuna.db`), any RDB URL
(`postgresql://...`, for jobs on several machines) or Optuna's journal file (`journal:///shared/fs/study.log`, for a
cluster's shared file system without a database). The sweeper creates the study with its sampler and pruner, asks it
for trials and launches them through the configured launcher (basic, joblib, submitit); it passes each job its trial
number (`callbacks.optuna.trial=N`). The job's callback (cifarbench.callbacks.optuna_pruning) loads the study by
name, reports the monitored metric after every evaluated epoch and, when the pruner says so, ends the run at that
epoch boundary with its last.pt. The sweeper then tells the study how each trial ended: complete with its value,
pruned (metrics.json says "pruned"), or failed (the job failed, died or was preempted); the study goes on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cifarbench.callbacks.optuna_pruning import PRUNED
from cifarbench.errors import ConfigError
from cifarbench.fileio import read_json


def job_overrides(trial: int, storage: str | None, study_name: str) -> list[str]:
    """What a job needs to find its trial: the number, and the study's storage URL and name, resolved here once."""
    return [f"callbacks.optuna.trial={trial}", f"callbacks.optuna.storage={json.dumps(storage)}",
            f"callbacks.optuna.study_name={json.dumps(study_name)}"]


def built(node: Any) -> Any:
    """An Optuna sampler or pruner from its config node, or as Hydra already built it."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    return instantiate(node) if isinstance(node, (dict, DictConfig)) else node


def check_shared_storage(storage: str | None, pruner: Any) -> None:
    import optuna

    if not isinstance(pruner, optuna.pruners.NopPruner) and storage is None:
        raise ConfigError(
            "hydra.sweeper.storage=null keeps the Optuna study in the sweeper's memory, where the jobs can't report to "
            "it, so nothing could be pruned; give a storage the jobs share (the default sqlite:///<sweep dir>/"
            "optuna.db, an RDB URL, or journal:///<shared file>) or turn pruning off with hydra/sweeper/pruner=none")


def distribution(name: str, sweep: Any):
    """Optuna's distribution for one Hydra sweep override: interval(a, b) (log with tag(log, ...)), choice(...) or
    range(a, b[, step])."""
    import optuna.distributions as dist
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if isinstance(sweep, IntervalSweep):
        log = "log" in (sweep.tags or set())
        if isinstance(sweep.start, int) and isinstance(sweep.end, int) and not isinstance(sweep.start, bool):
            return dist.IntDistribution(sweep.start, sweep.end, log=log)
        return dist.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep):
        values, value = [], sweep.start
        while (value < sweep.stop) if sweep.step > 0 else (value > sweep.stop):
            values.append(value)
            value += sweep.step
        return dist.CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return dist.CategoricalDistribution(list(sweep.list))
    raise ConfigError(f"{name}: {type(sweep).__name__} is not a search space; use interval(a, b), "
                      "tag(log, interval(a, b)), choice(x, y, ...) or range(a, b)")


def search_space(arguments: list[str], params: dict[str, str] | None) -> tuple[list[str], dict[str, Any]]:
    """(fixed overrides, {name: distribution}) from the command line and hydra.sweeper.params; a command-line range
    for a key replaces the one in params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given = parser.parse_overrides(arguments)
    command_line = {override.get_key_element() for override in given}
    from_params = [f"{key}={value}" for key, value in (params or {}).items() if key not in command_line]
    fixed, space = [], {}
    for override in given + parser.parse_overrides(from_params):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(key, override.value())
        else:
            fixed.append(override.input_line)
    return fixed, space


def override_value(value: Any) -> str:
    """A trial's value as Hydra override text: floats in full precision, strings quoted where needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not value.replace("_", "").replace(".", "").replace("-", "").isalnum():
        return json.dumps(value)
    return str(value)


def trial_outcome(job_return: Any) -> tuple[str, float | None]:
    """("complete", value), ("pruned", None) or ("fail", None) for one job: a job that raised, died without
    metrics.json or recorded a failure is a failed trial, never a value."""
    from hydra.core.utils import JobStatus

    if job_return.status != JobStatus.COMPLETED:
        return "fail", None
    status = job_status(job_return)
    if status == PRUNED:
        return "pruned", None
    value = job_return.return_value
    if status != "completed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "fail", None
    return "complete", float(value)


def job_status(job_return: Any) -> str | None:
    """The status in the job's metrics.json (the job's run directory from its Hydra config; a repeated run's
    repeat_*/ directories count as pruned or failed if any of them was)."""
    output_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir)) if job_return.hydra_cfg else None
    if output_dir is None:
        return None
    paths = [output_dir / "metrics.json"] if (output_dir / "metrics.json").is_file() else sorted(
        output_dir.glob("repeat_*/metrics.json"))
    statuses = [(read_json(path) or {}).get("status") for path in paths]
    if not statuses:
        return None
    for status in (PRUNED, None, "failed", "interrupted"):
        if status in statuses:
            return status
    return "completed" if all(status == "completed" for status in statuses) else statuses[0]
