"""Sweeps and their review: the Hydra callback that summarises a multirun (the TensorBoard side of a run's review,
hparams, images and text, is in cifarbench.loggers.tensorboard).

Register the callback in the Hydra config (conf/train.yaml); listing every argument lets users override them
without a `+` (e.g. hydra.callbacks.sweep_report.plots=false):

    hydra:
      callbacks:
        sweep_report:
          _target_: cifarbench.cli.sweep.SweepReport
          sort_by: test_acc
          descending: true
          plots: true
          fail_on_failed_jobs: true

When a multirun ends it writes results.md, results.csv and the plots of `cifarbench.report` into the sweep
directory, prints the table, and ends the process with exit status 1 if any job did not complete.

Why exit status works this way: Hydra 1.3 calls every callback inside `except Exception` and turns an exception into
a warning, so an ordinary exception in `on_multirun_end` would leave the status at 0. SystemExit derives from
BaseException, passes through Hydra's handler and `hydra.main`, and becomes the process exit status. Failing jobs do
not raise (the task records them as failed in metrics.json and returns), so the sweep runs every job first.
Hydra calls on_multirun_end in reverse order of hydra.callbacks: keep sweep_report first there, so that it runs
last and its SystemExit cannot keep another callback from running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifarbench.reporting.best_run import LINK_NAME, select_best
from cifarbench.reporting.group_table import render_groups_terminal
from cifarbench.reporting.summary import review_groups, write_report
from cifarbench.reporting.table import (
    collect_runs,
    failed_runs,
    render_terminal,
    sort_runs,
)

EXIT_JOBS_FAILED = 1


# ------------------------------------------------------------------------------------------- Hydra callback
def sweep_failed_jobs(sweep_dir: str | Path) -> list[dict]:
    """Report rows (see `cifarbench.reporting.table.run_row`) of the jobs below `sweep_dir` that did not complete."""
    return failed_runs(collect_runs([sweep_dir]))


def write_sweep_summary(sweep_dir: Path, sort_by: str, descending: bool, plots: bool) -> list[Path]:
    runs = collect_runs([sweep_dir])
    if not runs:
        print(f"sweep summary: no job of {sweep_dir} left a run directory (each was refused before it started; "
              "see the errors above)")
        return []
    groups = review_groups(runs)
    paths = write_report(runs, sweep_dir, sort_by, descending, plots, sources=[str(sweep_dir)], groups=groups)
    print(render_terminal(sort_runs(runs, sort_by, descending)))
    if groups.shown:
        print(render_groups_terminal(groups.groups, None))
    best = select_best(runs)
    if best is None:
        print(f"sweep: no job completed ({len(runs)} failed or pruned); no best run (the reasons are listed above "
              "and in results.md)")
    else:
        print(f"sweep: best job {best.describe()}; weights: {sweep_dir / LINK_NAME}")
    if groups.verdict:
        print(f"sweep: {groups.verdict}")
    print(f"sweep summary: {', '.join(str(path) for path in paths)}")
    return paths


class SweepReport(Callback):
    """Writes the sweep's results table and plots when a multirun ends; exit status 1 if any job failed.

    It prints rather than logs: after the last job, the logging handlers still point into that job's log file.
    """

    def __init__(
        self,
        sort_by: str = "test_acc",
        descending: bool = True,
        plots: bool = True,
        fail_on_failed_jobs: bool = True,
    ) -> None:
        self.sort_by = sort_by
        self.descending = descending
        self.plots = plots
        self.fail_on_failed_jobs = fail_on_failed_jobs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            write_sweep_summary(sweep_dir, self.sort_by, self.descending, self.plots)
        except Exception as error:  # noqa: BLE001  (a broken summary must not hide the jobs' own outcome below)
            print(f"sweep summary failed: {type(error).__name__}: {error}")
        failed = sweep_failed_jobs(sweep_dir)
        if failed and self.fail_on_failed_jobs:
            print(f"sweep: {len(failed)} job(s) did not complete; exit status {EXIT_JOBS_FAILED}")
            raise SystemExit(EXIT_JOBS_FAILED)


def parallel_job_slot(num_slots: int) -> int:
    """`hydra.job.num % num_slots` inside a multirun job, else 0.

    A hook for spreading the jobs of a parallel (joblib) sweep over `num_slots` devices: job k uses device
    k % num_slots. It assumes jobs of similar length; with n_jobs <= num_slots no two jobs share a device at start.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if num_slots <= 1 or not HydraConfig.initialized():
        return 0
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return 0
    return int(hydra_cfg.job.num) % num_slots
