"""`python -m cifarbench.report DIR [DIR ...]`: one results table (terminal, Markdown, CSV) and plots for every run
found below the given run or sweep directories.

    python -m cifarbench.report outputs/multirun/2025-01-31/12-00-00
    python -m cifarbench.report outputs/multirun/a outputs/multirun/b --sort params_m --asc --out review/

Every `metrics.json` below the directories is one row (see DESIGN.md for its schema). Old or failed runs may lack
any key: the cell is then "-". A Hydra job directory (it has `.hydra/`) without `metrics.json` is listed as
`missing`: the job died before it could write one (killed, out of memory, timed out).

Files written to --out (default: the common parent of the directories):
  results.md, results.csv          the table; CSV cells hold the raw metrics.json values (accuracies as fractions)
  accuracy_per_epoch.png           test accuracy against epoch, one line per run (val accuracy for runs that hold
                                   out a validation split: they only evaluate the test set once, at the end)
  accuracy_vs_params.png           test accuracy of the best model against parameters and against GFLOPs,
  accuracy_vs_gflops.png           one point per model and dataset (mean of its runs, bars span min..max)
The plots need matplotlib (`pip install cifarbench[plots]`); without it they are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarbench.best_run import COMPLETED, LINK_NAME, select_best, write_best
from cifarbench.errors import CifarbenchError, exit_on_user_error

METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "results.md"
CSV_FILE = "results.csv"
PLOT_FILES = ("accuracy_per_epoch.png", "accuracy_vs_params.png", "accuracy_vs_gflops.png")
MATPLOTLIB_MISSING = "plots skipped: matplotlib is not installed (pip install cifarbench[plots])"
MISSING = "missing"
EMPTY = "-"
TERMINAL_RUN_WIDTH = 40
LEGEND_LABEL_WIDTH = 50


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
    Column("test_acc", "test acc %", _percent),
    Column("final_test_acc", "final test acc %", _percent),
    Column("test_top5", "test top5 %", _percent),
    Column("params_m", "params (M)", _significant),
    Column("gflops", "GFLOPs", _significant),
    Column("epochs", "epochs", _whole),
    Column("wall_time_s", "wall time", _duration),
    Column("img_per_s", "img/s", _whole),
)
COLUMN_KEYS = tuple(column.key for column in COLUMNS)
CSV_KEYS = COLUMN_KEYS + ("error",)


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
    best, final, test = (
        _mapping(metrics.get("best")),
        _mapping(metrics.get("final")),
        _mapping(metrics.get("test")),
    )
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
        "best_val_acc": _number(best.get("val/acc")),
        "test_acc": _number(test.get("acc")),
        "final_test_acc": _number(final.get("test/acc")),
        "test_top5": _number(test.get("top5")),
        "params_m": params / 1e6 if params is not None else None,
        "gflops": _number(metrics.get("gflops")),
        "epochs": int(epochs) if epochs is not None else None,
        "wall_time_s": _number(metrics.get("wall_time_s")),
        "img_per_s": _number(metrics.get("img_per_s")),
        "history": history,
    }


def read_metrics(path: Path) -> dict:
    """The parsed file, or a stand-in payload that says why it could not be read (the run still gets a row)."""
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
    """Runs that did not complete: failed, interrupted, missing, unreadable, or still marked running."""
    return [run for run in runs if run["status"] != COMPLETED]


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


def _shortened(label: str, width: int = TERMINAL_RUN_WIDTH) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."


def render_terminal(runs: list[dict]) -> str:
    """Aligned plain-text table (numbers right-aligned), then the failed runs with their reason.

    Long run labels (Hydra names job directories after their overrides) are cut to keep rows on one screen; the
    overrides column and the full labels in results.md/.csv say the rest.
    """
    cells = [[_shortened(row[0]), *row[1:]] for row in table_cells(runs)]
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
    failed = failed_runs(runs)
    if failed:
        lines += ["", f"{len(failed)} of {len(runs)} runs did not complete:"]
        lines += [
            f"  {run['run']} ({run['status']}): {run['error'] or 'no reason recorded'}" for run in failed
        ]
    return "\n".join(lines)


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


BEST_MARK = " (best)"


def best_line(runs: list[dict]) -> str:
    best = select_best(runs)
    if best is None:
        return f"No run completed with a result ({len(runs)} run(s), see the failed runs)."
    return f"Best run{BEST_MARK}: {best.describe()}; its weights: {LINK_NAME} beside this table."


def render_markdown(runs: list[dict], sources: Iterable[str] = (), plots: Iterable[str] = ()) -> str:
    headers = [column.title for column in COLUMNS]
    rule = ["---:" if column.numeric else "---" for column in COLUMNS]
    lines = ["# Results", "", best_line(runs), ""]
    sources = list(sources)
    if sources:
        lines += ["Runs below: " + ", ".join(f"`{source}`" for source in sources), ""]
    shared = shared_overrides(runs)
    if shared:
        lines += ["Overrides of every run: " + " ".join(f"`{item}`" for item in shared), ""]
    lines += [f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |"]
    for run, row in zip(runs, table_cells(runs)):
        row[0] += BEST_MARK if run.get("is_best") else ""
        lines.append(f"| {' | '.join(_markdown_escape(text) for text in row)} |")
    lines += [
        "",
        "Accuracies in %; test acc is the best model's (picked on the monitored metric) on the test set.",
    ]
    failed = failed_runs(runs)
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- `{run['run']}` ({run['status']}): {_markdown_escape(run['error'] or 'no reason recorded')}"
            for run in failed
        ]
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


# ---------------------------------------------------------------------------------------------------- plots
def headline_accuracy(run: dict) -> float | None:
    return run["test_acc"] if run["test_acc"] is not None else run["final_test_acc"]


def epoch_curve(run: dict) -> tuple[str, list[float], list[float]] | None:
    """(split, epochs, accuracies) of a run's history: test accuracy, or val where only that was evaluated."""
    for split in ("test", "val"):
        points = [
            (_number(entry.get("epoch")), _number(entry.get(f"{split}/acc"))) for entry in run["history"]
        ]
        points = [(epoch, acc) for epoch, acc in points if epoch is not None and acc is not None]
        if points:
            return split, [epoch for epoch, _ in points], [acc for _, acc in points]
    return None


def model_points(runs: Iterable[dict], x_key: str) -> dict[str, list[tuple[str, float, list[float]]]]:
    """dataset -> [(model, x, accuracies of its completed runs)]: one point per model and dataset."""
    grouped: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for run in runs:
        accuracy, x = headline_accuracy(run), run.get(x_key)
        if run["status"] != COMPLETED or accuracy is None or x is None or x <= 0:
            continue
        xs, accuracies = grouped.setdefault((run["dataset"] or "?", run["model"] or "?"), ([], []))
        xs.append(x)
        accuracies.append(accuracy)
    points: dict[str, list[tuple[str, float, list[float]]]] = {}
    for (dataset, model), (xs, accuracies) in sorted(grouped.items()):
        points.setdefault(dataset, []).append((model, sum(xs) / len(xs), accuracies))
    return points


def agg_figure(width: float, height: float):
    # Figure + the Agg canvas directly, never pyplot: no GUI backend, no global state, safe inside any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def curve_label(run: dict, shared: set[str]) -> str:
    """What tells a run apart in a legend: its own overrides (not the sweep-wide ones), else its directory."""
    own = " ".join(item for item in run["override_list"] if item not in shared)
    return _shortened(own or run["run"], LEGEND_LABEL_WIDTH)


def plot_epoch_curves(runs: list[dict], path: Path) -> bool:
    shared = set(shared_overrides(runs))
    curves = [(curve_label(run, shared), epoch_curve(run)) for run in runs]
    curves = [(label, curve) for label, curve in curves if curve is not None]
    if not curves:
        return False
    figure = agg_figure(10, 5.5)
    axes = figure.add_subplot()
    any_val = any(split == "val" for _, (split, _, _) in curves)
    last_epoch = max(max(epochs) for _, (_, epochs, _) in curves)
    for label, (split, epochs, accuracies) in curves:
        suffix = "" if split == "test" else " (val)"
        axes.plot(
            epochs,
            [100 * acc for acc in accuracies],
            marker="." if len(epochs) < 30 else None,
            label=label + suffix,
        )
    title = "Test accuracy per epoch" + (" ((val): runs with a val split)" if any_val else "")
    # From epoch 0, so a 1-epoch sweep gets an axis of whole epochs rather than 0.96-1.04.
    axes.set(xlabel="epoch", ylabel="accuracy (%)", title=title, xlim=(0, last_epoch + 0.5))
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(
        fontsize="x-small" if len(curves) > 8 else "small", loc="center left", bbox_to_anchor=(1.01, 0.5)
    )
    figure.savefig(path)
    return True


def _plain_log_ticks(axis) -> None:
    """Log axis labelled 0.1, 0.2, 0.5, 1, 2, 5 ... rather than 2x10^-1: these axes span only a few decades."""
    from matplotlib.ticker import FuncFormatter

    def leading_digit(value: float) -> int:
        return round(value / 10 ** math.floor(math.log10(value)))

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(
        FuncFormatter(lambda value, _: f"{value:g}" if leading_digit(value) in (2, 5) else "")
    )


def plot_accuracy_vs(runs: list[dict], x_key: str, x_label: str, path: Path) -> bool:
    points = model_points(runs, x_key)
    if not points:
        return False
    figure = agg_figure(8, 5.5)
    axes = figure.add_subplot()
    for dataset, models in points.items():
        xs = [x for _, x, _ in models]
        means = [100 * sum(accs) / len(accs) for _, _, accs in models]
        spread = [
            [mean - 100 * min(accs) for mean, (_, _, accs) in zip(means, models)],
            [100 * max(accs) - mean for mean, (_, _, accs) in zip(means, models)],
        ]
        axes.errorbar(xs, means, yerr=spread, fmt="o", capsize=3, label=dataset)
        for (model, x, accs), mean in zip(models, means):
            name = model if len(accs) == 1 else f"{model} (n={len(accs)})"
            axes.annotate(name, (x, mean), textcoords="offset points", xytext=(5, 4), fontsize="small")
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    axes.set(xlabel=x_label, ylabel="test accuracy (%)", title=f"Test accuracy vs {x_label}")
    axes.grid(alpha=0.3, which="both")
    axes.legend(title="dataset")
    figure.savefig(path)
    return True


def write_plots(runs: list[dict], out_dir: Path) -> list[Path]:
    try:
        import matplotlib  # noqa: F401  (only to learn whether it is installed)
    except ImportError:
        print(MATPLOTLIB_MISSING)
        return []
    epoch_path, params_path, gflops_path = (out_dir / name for name in PLOT_FILES)
    written = [
        path
        for path, made in (
            (epoch_path, plot_epoch_curves(runs, epoch_path)),
            (params_path, plot_accuracy_vs(runs, "params_m", "parameters (M)", params_path)),
            (gflops_path, plot_accuracy_vs(runs, "gflops", "GFLOPs per image", gflops_path)),
        )
        if made
    ]
    return written


# --------------------------------------------------------------------------------------------------- report
def write_report(
    runs: list[dict],
    out_dir: str | Path,
    sort_by: str = "test_acc",
    descending: bool = True,
    plots: bool = True,
    sources: Iterable[str] = (),
) -> list[Path]:
    """Write results.md, results.csv and (matplotlib permitting) the PNG plots; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sort_runs(runs, sort_by, descending)
    plot_paths = write_plots(ordered, out_dir) if plots else []
    markdown_path, csv_path = out_dir / MARKDOWN_FILE, out_dir / CSV_FILE
    best = select_best(ordered)
    markdown_path.write_text(render_markdown(ordered, sources, [path.name for path in plot_paths]))
    write_csv(ordered, csv_path)
    return [markdown_path, csv_path, *plot_paths, *(write_best(best, out_dir) if best else [])]


def default_out_dir(dirs: list[str]) -> Path:
    return Path(os.path.commonpath([str(Path(d).resolve()) for d in dirs]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cifarbench.report",
        description="Results table (terminal, Markdown, CSV) and plots for every metrics.json below the directories.",
    )
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument(
        "--sort",
        default="test_acc",
        choices=COLUMN_KEYS,
        metavar="COLUMN",
        help=f"column to sort by (default test_acc): {', '.join(COLUMN_KEYS)}",
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--desc", dest="descending", action="store_true", default=True, help="largest first (default)"
    )
    order.add_argument("--asc", dest="descending", action="store_false", help="smallest first")
    parser.add_argument(
        "--out", help="where to write results.md/.csv and plots (default: common parent of dirs)"
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = collect_runs(args.dirs)
    if not runs:
        raise CifarbenchError(
            f"no {METRICS_FILE} below {', '.join(args.dirs)}: give the directory of a finished run or sweep"
        )
    out_dir = Path(args.out) if args.out else default_out_dir(args.dirs)
    paths = write_report(runs, out_dir, args.sort, args.descending, args.plots, sources=args.dirs)
    print(render_terminal(sort_runs(runs, args.sort, args.descending)))
    print()
    print(best_line(runs))
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
