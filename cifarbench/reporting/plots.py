"""The report's plots (matplotlib, optional: `pip install cifarbench[plots]`): accuracy per epoch, and accuracy
against parameters and GFLOPs."""

from __future__ import annotations

import math
from pathlib import Path

from cifarbench.reporting.groups import Group, Summary, group_runs
from cifarbench.reporting.labels import shortened
from cifarbench.reporting.table import _number, shared_overrides

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


def group_points(groups: list[Group], x_key: str) -> dict[str, list[tuple[str, float, Summary]]]:
    """dataset -> [(group label, x, its accuracies)]: one point per group (a configuration and its repeats)."""
    points: dict[str, list[tuple[str, float, Summary]]] = {}
    for group in groups:
        xs = [run[x_key] for run in group.runs if run.get(x_key) is not None and run[x_key] > 0]
        accuracies = Summary([value for value in map(headline_accuracy, group.runs) if value is not None])
        if xs and accuracies.n:
            points.setdefault(group.runs[0]["dataset"] or "?", []).append((group.label, sum(xs) / len(xs),
                                                                           accuracies))
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
    return shortened(own or run["run"], LEGEND_LABEL_WIDTH)


def mean_curve(runs: list[dict]) -> tuple[str, list[float], list[Summary]] | None:
    """(split, epochs, per-epoch accuracies over the runs) for the epochs every run of a group evaluated."""
    curves = [curve for curve in map(epoch_curve, runs) if curve is not None]
    if not curves:
        return None
    split = curves[0][0]
    curves = [curve for curve in curves if curve[0] == split]
    common = sorted(set.intersection(*(set(epochs) for _, epochs, _ in curves)))
    by_epoch = [dict(zip(epochs, accuracies)) for _, epochs, accuracies in curves]
    return split, common, [Summary([points[epoch] for points in by_epoch]) for epoch in common]


def plot_epoch_curves(runs: list[dict], path: Path, groups: list[Group] | None = None) -> bool:
    """One line per group: its mean, with the 95% confidence band of the mean where it has several runs; runs in no
    group (failed, interrupted) as their own lines."""
    shared = set(shared_overrides(runs))
    grouped = {id(run) for group in groups or [] for run in group.runs}
    curves = []  # (label, split, epochs, Summary per epoch)
    for group in groups or []:
        curve = mean_curve(group.runs)
        if curve is not None:
            label = shortened(group.label, LEGEND_LABEL_WIDTH) + (f" (n={group.n})" if group.n > 1 else "")
            curves.append((label, *curve))
    for run in runs:
        curve = epoch_curve(run) if id(run) not in grouped else None
        if curve is not None:
            split, epochs, accuracies = curve
            curves.append((curve_label(run, shared), split, epochs, [Summary([acc]) for acc in accuracies]))
    if not curves:
        return False
    figure = agg_figure(10, 5.5)
    axes = figure.add_subplot()
    any_val = any(split == "val" for _, split, _, _ in curves)
    last_epoch = max(max(epochs, default=0) for _, _, epochs, _ in curves)
    for label, split, epochs, summaries in curves:
        suffix = "" if split == "test" else " (val)"
        line, = axes.plot(epochs, [100 * summary.mean for summary in summaries],
                          marker="." if len(epochs) < 30 else None, label=label + suffix)
        if any(summary.ci for summary in summaries):
            bands = [summary.ci or (summary.mean, summary.mean) for summary in summaries]
            axes.fill_between(epochs, [100 * low for low, _ in bands], [100 * high for _, high in bands],
                              color=line.get_color(), alpha=0.2, linewidth=0)
    title = "Test accuracy per epoch" + (" ((val): runs with a val split)" if any_val else "")
    if any(summary.ci for *_, summaries in curves for summary in summaries):
        title += "; bands: 95% CI of the mean"
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


def tick_bounds(low: float, high: float) -> tuple[float, float]:
    """Log-axis limits from the 1-2-5 tick at or below `low` to the one at or above `high` (a little margin
    beyond), so that the smallest and the largest model each have a labelled tick next to them; matplotlib's own
    limits can start just above a tick and leave the smallest model with none."""
    def ticks_around(value: float) -> tuple[float, float]:
        decade = 10 ** math.floor(math.log10(value))
        steps = [decade * m for m in (1, 2, 5, 10)]
        below = max(t for t in steps if t <= value * (1 + 1e-9))
        above = min(t for t in steps if t >= value * (1 - 1e-9))
        return below, above

    return ticks_around(low)[0] / 1.15, ticks_around(high)[1] * 1.15


def plot_accuracy_vs(groups: list[Group], x_key: str, x_label: str, path: Path) -> bool:
    """One point per group at its mean accuracy; error bars: the 95% CI of the mean (groups of several runs)."""
    points = group_points(groups, x_key)
    if not points:
        return False
    figure = agg_figure(8, 5.5)
    axes = figure.add_subplot()
    for dataset, entries in points.items():
        xs = [x for _, x, _ in entries]
        means = [100 * summary.mean for _, _, summary in entries]
        bars = [summary.ci or (summary.mean, summary.mean) for _, _, summary in entries]
        spread = [[mean - 100 * low for mean, (low, _) in zip(means, bars)],
                  [100 * high - mean for mean, (_, high) in zip(means, bars)]]
        axes.errorbar(xs, means, yerr=spread, fmt="o", capsize=3, label=dataset)
        for (label, x, summary), mean in zip(entries, means):
            name = shortened(label, LEGEND_LABEL_WIDTH) + (f" (n={summary.n})" if summary.n > 1 else "")
            axes.annotate(name, (x, mean), textcoords="offset points", xytext=(5, 4), fontsize="small")
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    all_xs = [x for entries in points.values() for _, x, _ in entries]
    axes.set_xlim(*tick_bounds(min(all_xs), max(all_xs)))
    title = f"Test accuracy vs {x_label}"
    if any(summary.n > 1 for entries in points.values() for *_, summary in entries):
        title += " (bars: 95% CI of the mean)"
    axes.set(xlabel=x_label, ylabel="test accuracy (%)", title=title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(title="dataset")
    figure.savefig(path)
    return True


def write_plots(runs: list[dict], out_dir: Path, groups: list[Group] | None = None) -> list[Path]:
    try:
        import matplotlib  # noqa: F401  (only to learn whether it is installed)
    except ImportError:
        print(MATPLOTLIB_MISSING)
        return []
    groups = group_runs(runs) if groups is None else groups
    epoch_path, params_path, gflops_path = (out_dir / name for name in PLOT_FILES)
    written = [
        path
        for path, made in (
            (epoch_path, plot_epoch_curves(runs, epoch_path, groups)),
            (params_path, plot_accuracy_vs(groups, "params_m", "parameters (M)", params_path)),
            (gflops_path, plot_accuracy_vs(groups, "gflops", "GFLOPs per image", gflops_path)),
        )
        if made
    ]
    return written
