"""The report's plots (matplotlib, optional: `pip install cifarbench[plots]`): accuracy per epoch, and accuracy
against parameters and GFLOPs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from cifarbench.reporting.table import COMPLETED, _number, _shortened, shared_overrides

PLOT_FILES = ("accuracy_per_epoch.png", "accuracy_vs_params.png", "accuracy_vs_gflops.png")
MATPLOTLIB_MISSING = "plots skipped: matplotlib is not installed (pip install cifarbench[plots])"
LEGEND_LABEL_WIDTH = 50


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
