"""A report on disk: results.md, results.csv, the plots and the best run's link, written together."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cifarbench.reporting.best_run import select_best, write_best
from cifarbench.reporting.plots import write_plots
from cifarbench.reporting.table import CSV_FILE, MARKDOWN_FILE, render_markdown, sort_runs, write_csv


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
