"""`python -m cifarbench.report DIR [DIR ...]`: one results table (terminal, Markdown, CSV) and plots for every run
found below the given run or sweep directories.

    python -m cifarbench.report outputs/multirun/2025-01-31/12-00-00
    python -m cifarbench.report outputs/multirun/a outputs/multirun/b --sort params_m --asc --out review/
    python -m cifarbench.report outputs/multirun/2025-01-31/12-00-00 --baseline 'model=resnet20'

Every `metrics.json` below the directories is one row (cifarbench.engine.hooks.metrics_file writes them). Old or
failed runs may lack any key: the cell is then "-". A Hydra job directory (it has `.hydra/`) without `metrics.json`
is listed as `missing`: the job died before it could write one (killed, out of memory, timed out).

Files written to --out (default: the common parent of the directories):
  results.md, results.csv          the table; CSV cells hold the raw metrics.json values (accuracies as fractions)
  results_groups.csv               where runs repeat a configuration (seeds, folds) or --baseline is given: per
                                   group n, mean, std, 95% CI, min, max of each metric, and the comparison with the
                                   baseline (cifarbench.reporting.groups); results.md shows the same
  accuracy_per_epoch.png           test accuracy against epoch, one line per group: its mean, with the 95% CI band
                                   of the mean for repeated configurations (val accuracy for runs that hold out a
                                   validation split: they only evaluate the test set once, at the end)
  accuracy_vs_params.png           test accuracy of the selected model against parameters and against GFLOPs,
  accuracy_vs_gflops.png           one point per group (mean of its runs, bars: the 95% CI of the mean)
The plots need matplotlib (`pip install cifarbench[plots]`); without it they are skipped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarbench.errors import CifarbenchError
from cifarbench.reporting.best_run import COMPLETED, LINK_NAME, PRUNED, select_best
from cifarbench.reporting.labels import TERMINAL_RUN_WIDTH, job_label, shortened  # noqa: F401 - the width, for readers

METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "results.md"
CSV_FILE = "results.csv"
MISSING = "missing"
EMPTY = "-"


# ------------------------------------------------------------------------------------------------ formatting
def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _significant(value: float) -> str:
    """Three significant digits without scientific notation: 36.5, 11.2, 0.272, 0.00041."""
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _whole(value: float) -> str:
    return f"{value:.0f}"


@dataclass(frozen=True)
class Column:
    key: str  # the row key, the CSV header and the name --sort takes
    title: str  # the header in the terminal and Markdown tables
    format: Callable[[Any], str] = str
    numeric: bool = True


COLUMNS = (
    Column("run", "run", numeric=False),
    Column("model", "model", numeric=False),
    Column("dataset", "dataset", numeric=False),
    Column("overrides", "overrides", numeric=False),
    Column("status", "status", numeric=False),
    Column("best_val_acc", "best val acc %", _percent),
    Column("selected_on", "selected on", numeric=False),
    Column("test_acc", "selected test acc %", _percent),
    Column("final_test_acc", "final test acc %", _percent),
    Column("test_top5", "test top5 %", _percent),
    Column("params_m", "params (M)", _significant),
    Column("gflops", "GFLOPs", _significant),
    Column("epochs", "epochs", _whole),
    Column("time_to_target_s", "time to target s", lambda value: f"{value:.1f}"),
    Column("target_epoch", "target epoch", _whole),
    Column("wall_time_s", "wall time", _duration),
    Column("img_per_s", "img/s", _whole),
)
COLUMN_KEYS = tuple(column.key for column in COLUMNS)
CSV_KEYS = COLUMN_KEYS + ("group", "error")  # group: the run's configuration in results_groups.csv


def format_cell(column: Column, value: Any) -> str:
    if value is None or value == "":
        return EMPTY
    return column.format(value)


# ------------------------------------------------------------------------------------------------ collecting
def _number(value: Any) -> float | None:
    """A finite number, or None: old files hold null, NaN or nothing where a run never got that far."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return "" if value is None else " ".join(str(value).split())


def _override_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [_text(item) for item in value]
    return [_text(value)] if value else []


def _read_yaml(path: Path) -> Any:
    import yaml  # PyYAML comes with omegaconf

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def hydra_job_info(run_dir: Path) -> dict:
    """Overrides and config-group choices from the `.hydra/` folder Hydra leaves in every job directory."""
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    hydra_cfg = _mapping(_read_yaml(run_dir / ".hydra" / "hydra.yaml"))
    choices = _mapping(_mapping(_mapping(hydra_cfg.get("hydra")).get("runtime")).get("choices"))
    return {"overrides": overrides if isinstance(overrides, list) else [], "choices": choices}


def run_row(metrics: dict, run_dir: Path, label: str) -> dict:
    """One table row from a metrics.json payload; every value is None where the payload lacks it."""
    best, final, test, selected = (
        _mapping(metrics.get("best")),
        _mapping(metrics.get("final")),
        _mapping(metrics.get("test")),
        _mapping(metrics.get("selected")),
    )
    final_test, target = _mapping(metrics.get("final_test")), _mapping(metrics.get("time_to_target"))
    choices = _mapping(metrics.get("choices"))
    history = [entry for entry in metrics.get("history") or [] if isinstance(entry, dict)]
    params = _number(metrics.get("params"))
    epochs = _number(metrics.get("epochs"))
    if epochs is None and history:
        epochs = _number(history[-1].get("epoch"))
    return {
        "run": label,
        "run_dir": str(run_dir),
        "model": _text(metrics.get("model") or choices.get("model")),
        "dataset": _text(metrics.get("dataset") or choices.get("dataset")),
        "overrides": " ".join(_override_list(metrics.get("overrides"))),
        "override_list": _override_list(metrics.get("overrides")),
        "status": _text(metrics.get("status")) or "unknown",
        "error": _text(metrics.get("error")),
        "stopped_early": _text(metrics.get("stopped_early")),
        "best_val_acc": _number(best.get("val/acc")),
        "test_acc": _number(test.get("acc")),
        "final_test_acc": _number(final_test.get("acc", final.get("test/acc"))),
        "selected_on": selected_on(metrics, selected),
        "test_top5": _number(test.get("top5")),
        "params_m": params / 1e6 if params is not None else None,
        "gflops": _number(metrics.get("gflops")),
        "epochs": int(epochs) if epochs is not None else None,
        "time_to_target_s": _number(target.get("train_s")),  # training seconds, compile time kept apart
        "target_epoch": _number(target.get("epoch")),
        "wall_time_s": _number(metrics.get("wall_time_s")),
        "img_per_s": _number(metrics.get("img_per_s")),
        "history": history,
    }


def selected_on(metrics: dict, selected: dict) -> str:
    """'val', or 'test' where the run picked its checkpoint on the test set itself; '' where unknown."""
    monitor = selected.get("monitor") or metrics.get("monitor")
    if not isinstance(monitor, str) or "/" not in monitor:
        return ""
    return monitor.split("/", 1)[0].split("_", 1)[0]


def read_metrics(path: Path) -> dict:
    """The parsed file, or a stand-in payload that says why it could not be read (the run still gets a row)."""
    # Not fileio.read_json: the table's row says why the file could not be read (a torn file's parse error).
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"status": "unreadable", "error": f"{path.name} could not be read: {error}"}
    if not isinstance(payload, dict):
        return {"status": "unreadable", "error": f"{path.name} holds no JSON object"}
    return payload


def missing_metrics(run_dir: Path) -> dict:
    """What is known about a Hydra job that left no metrics.json."""
    info = hydra_job_info(run_dir)
    return {
        "status": MISSING,
        "error": f"no {METRICS_FILE}: the job ended before writing one (killed, out of memory or timed out?)",
        "overrides": info["overrides"],
        "choices": info["choices"],
    }


def natural_key(text: str) -> list:
    """Sort key that puts job 2 before job 10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _run_label(run_dir: Path, root: Path) -> str:
    label = os.path.relpath(run_dir, root)
    return run_dir.name if label == "." else label


def _run_dirs_below(directory: Path) -> dict[Path, bool]:
    """run dir -> whether it holds metrics.json; Hydra job dirs without one are runs too (they failed hard)."""
    found = {path.parent: True for path in directory.rglob(METRICS_FILE) if path.is_file()}
    for hydra_dir in directory.rglob(".hydra"):
        if hydra_dir.is_dir() and (hydra_dir / "overrides.yaml").is_file():
            found.setdefault(hydra_dir.parent, False)
    return found


def collect_runs(dirs: Iterable[str | Path]) -> list[dict]:
    """One row (see `run_row`) per run found below `dirs`, in path order (job 2 before job 10); a directory
    given twice counts once."""
    dirs = list(dirs)
    roots = [Path(d).resolve() for d in dirs]
    for root, given in zip(roots, dirs):
        if not root.is_dir():
            raise CifarbenchError(
                f"{given} is not a directory: give run or sweep directories (e.g. outputs/multirun/...)"
            )
    if not roots:
        return []
    common = Path(os.path.commonpath(roots))
    run_dirs: dict[Path, bool] = {}
    for root in roots:
        for run_dir, has_metrics in _run_dirs_below(root).items():
            run_dirs[run_dir] = run_dirs.get(run_dir, False) or has_metrics
    rows = []
    for run_dir in sorted(run_dirs, key=natural_key):
        metrics = read_metrics(run_dir / METRICS_FILE) if run_dirs[run_dir] else missing_metrics(run_dir)
        rows.append(run_row(metrics, run_dir, _run_label(run_dir, common)))
    return rows


def failed_runs(runs: Iterable[dict]) -> list[dict]:
    """Runs that did not complete: failed, interrupted, missing, unreadable, or still marked running (a pruned trial
    ended as its search meant it to: not failed)."""
    return [run for run in runs if run["status"] not in (COMPLETED, PRUNED)]


def pruned_runs(runs: Iterable[dict]) -> list[dict]:
    return [run for run in runs if run["status"] == PRUNED]


# --------------------------------------------------------------------------------------------------- sorting
def sort_runs(runs: Iterable[dict], sort_by: str = "test_acc", descending: bool = True) -> list[dict]:
    """Sorted by one column; runs without a value go last either way, ties keep run order."""
    if sort_by not in COLUMN_KEYS:
        raise CifarbenchError(f"cannot sort by '{sort_by}': choose one of {', '.join(COLUMN_KEYS)}")
    numeric = next(column.numeric for column in COLUMNS if column.key == sort_by)
    runs = sorted(runs, key=lambda run: natural_key(run["run"]))
    present = [run for run in runs if run.get(sort_by) not in (None, "")]
    absent = [run for run in runs if run.get(sort_by) in (None, "")]

    def sort_key(run: dict) -> Any:
        return run[sort_by] if numeric else str(run[sort_by]).lower()

    return sorted(present, key=sort_key, reverse=descending) + absent


# --------------------------------------------------------------------------------------------------- tables
def shared_overrides(runs: list[dict]) -> list[str]:
    """Overrides every run has (e.g. dataset.source.train_size=128 on a whole sweep); none for a single run."""
    if len(runs) < 2:
        return []
    others = [set(run["override_list"]) for run in runs[1:]]
    return [item for item in runs[0]["override_list"] if all(item in other for other in others)]


def table_cells(runs: list[dict]) -> list[list[str]]:
    """Formatted cells; the overrides cell leaves out the shared ones, which the tables state once above."""
    shared = set(shared_overrides(runs))
    cells = []
    for run in runs:
        own = " ".join(item for item in run["override_list"] if item not in shared)
        cells.append([format_cell(column, own if column.key == "overrides" else run.get(column.key))
                      for column in COLUMNS])
    return cells


def render_terminal(runs: list[dict]) -> str:
    """Aligned plain-text table (numbers right-aligned), then the failed runs with their reason.

    Long run labels (Hydra names job directories after their overrides) are cut to keep rows on one screen; the
    overrides column and the full labels in results.md/.csv say the rest.
    """
    cells = [[shortened(job_label(row[0])), *row[1:]] for row in table_cells(runs)]
    headers = [column.title for column in COLUMNS]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]

    def line(texts: list[str]) -> str:
        padded = [
            text.rjust(width) if column.numeric else text.ljust(width)
            for text, width, column in zip(texts, widths, COLUMNS)
        ]
        return "  ".join(padded).rstrip()

    lines = [line(headers), "  ".join("-" * width for width in widths)] + [line(row) for row in cells]
    shared = shared_overrides(runs)
    if shared:
        lines += ["", f"overrides of every run: {' '.join(shared)}"]
    failed, pruned = failed_runs(runs), pruned_runs(runs)
    if failed:
        lines += ["", f"{len(failed)} of {len(runs)} runs did not complete:", *ended_early(failed, "  {}")]
    if pruned:
        lines += ["", f"{len(pruned)} of {len(runs)} runs were pruned (their rows show the last values):",
                  *ended_early(pruned, "  {}")]
    return "\n".join(lines)


def ended_early(runs: list[dict], line: str, escape=str, name: str = "{}") -> list[str]:
    """'<run> (<status>): <why>' per run in `line`'s frame, the name in `name`'s, the reason escaped for its table."""
    return [line.format(f"{name.format(run['run'])} ({run['status']}): "
                        + escape(run["error"] or run["stopped_early"] or "no reason recorded")) for run in runs]


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


BEST_MARK = " (best)"


def best_line(runs: list[dict]) -> str:
    best = select_best(runs)
    if best is None:
        return f"No run completed with a result ({len(runs)} run(s), see the failed runs)."
    return f"Best run{BEST_MARK}: {best.describe()}; its weights: {LINK_NAME} beside this table."


def render_markdown(runs: list[dict], sources: Iterable[str] = (), plots: Iterable[str] = (),
                    group_lines: Iterable[str] = (), verdict: str | None = None) -> str:
    headers = [column.title for column in COLUMNS]
    rule = ["---:" if column.numeric else "---" for column in COLUMNS]
    lines = ["# Results", "", best_line(runs), ""] + ([verdict, ""] if verdict else [])
    sources = list(sources)
    if sources:
        lines += ["Runs below: " + ", ".join(f"`{source}`" for source in sources), ""]
    shared = shared_overrides(runs)
    if shared:
        lines += ["Overrides of every run: " + " ".join(f"`{item}`" for item in shared), ""]
    lines += list(group_lines)
    lines += ["## Runs", "", f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |"] if group_lines else [
        f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |"]
    for run, row in zip(runs, table_cells(runs)):
        row[0] += BEST_MARK if run.get("is_best") else ""
        lines.append(f"| {' | '.join(_markdown_escape(text) for text in row)} |")
    lines += [
        "",
        "Accuracies in %. Selected test acc: the checkpoint the run picked on its monitored split ('selected on'); "
        "where that is 'test', the run picked it on the test set itself, which flatters it: compare final test acc "
        "(the last epoch's weights) there.",
    ]
    failed, pruned = failed_runs(runs), pruned_runs(runs)
    if failed:
        lines += ["", "## Failed runs", "", *ended_early(failed, "- {}", _markdown_escape, "`{}`")]
    if pruned:
        lines += ["", "## Pruned trials", "", "Stopped early by the search's pruner; their rows show the last values.",
                  "", *ended_early(pruned, "- {}", _markdown_escape, "`{}`")]
    plots = list(plots)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(name).stem}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_KEYS)
        for run in runs:
            writer.writerow(["" if run.get(key) is None else run.get(key) for key in CSV_KEYS])
