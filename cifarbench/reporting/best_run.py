"""The best run of a sweep or experiment directory: which job won on the monitored metric, and where its weights are.

Selection is on validation accuracy where the runs hold out a validation split; otherwise on test accuracy, the
CIFAR papers' habit, which `best.json` and the reports say plainly, since it selects on the test set. The winner's
`best.pt` is linked beside the results (`best.pt`, with `best.json` naming the job, its overrides and metrics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cifarbench.fileio import write_json

COMPLETED = "completed"
PRUNED = "pruned"  # stopped early by an Optuna pruner (cifarbench.callbacks.optuna_pruning): ended, not failed
LINK_NAME, SUMMARY_NAME = "best.pt", "best.json"


@dataclass
class BestRun:
    run: dict
    metric: str  # report column: best_val_acc or test_acc
    on_test_set: bool

    @property
    def value(self) -> float:
        return self.run[self.metric]

    def describe(self) -> str:
        what = "validation accuracy" if not self.on_test_set else "test accuracy (this selects on the test set)"
        return f"{self.run['run']} with {100 * self.value:.2f}% {what}"


def select_best(runs: list[dict]) -> BestRun | None:
    """The completed run with the highest validation accuracy, or test accuracy if no run has a validation split;
    None when no run completed with a result. Marks the winner's row with run["is_best"]."""
    completed = [run for run in runs if run["status"] == COMPLETED]
    for metric, on_test in (("best_val_acc", False), ("test_acc", True)):
        candidates = [run for run in completed if run.get(metric) is not None]
        if candidates:
            winner = max(candidates, key=lambda run: run[metric])  # the first of equals: run order
            for run in runs:
                run["is_best"] = run is winner
            return BestRun(winner, metric, on_test)
    return None


def write_best(best: BestRun, out_dir: Path) -> list[Path]:
    """best.json, and best.pt: a relative link to the winner's checkpoint (when it kept one)."""
    out_dir = Path(out_dir)
    checkpoint = Path(best.run["run_dir"]) / "checkpoints" / "best.pt"
    link = out_dir / LINK_NAME
    written = [out_dir / SUMMARY_NAME]
    if link.is_symlink() or link.exists():
        link.unlink()
    if checkpoint.is_file():
        link.symlink_to(os.path.relpath(checkpoint, out_dir))
        written.append(link)
    write_json(out_dir / SUMMARY_NAME, {
        "run": best.run["run"],
        "run_dir": best.run["run_dir"],
        "overrides": best.run["override_list"],
        "selected_on": best.metric,
        "selected_on_test_set": best.on_test_set,
        "value": best.value,
        "metrics": {key: best.run.get(key) for key in ("best_val_acc", "test_acc", "test_top5", "params_m", "epochs",
                                                        "wall_time_s")},
        "checkpoint": str(checkpoint) if checkpoint.is_file() else None,
    })
    return written
