"""A report on disk: results.md, results.csv, the groups' statistics, the plots and the best run's link, written
together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cifarbench.reporting.best_run import select_best, write_best
from cifarbench.reporting.group_table import GROUPS_CSV_FILE, render_groups_markdown, write_groups_csv
from cifarbench.reporting.groups import Group, best_versus_runner_up, compare_to_baseline, group_runs
from cifarbench.reporting.plots import write_plots
from cifarbench.reporting.table import CSV_FILE, MARKDOWN_FILE, render_markdown, sort_runs, write_csv


@dataclass
class Groups:
    """The runs in groups of one configuration, the comparison with a baseline group, and the verdict on the best
    group against the runner-up."""

    groups: list[Group] = field(default_factory=list)
    verdict: str | None = None

    @property
    def shown(self) -> bool:
        """Worth a table: a configuration measured more than once, or a comparison asked for."""
        return any(group.n > 1 or group.is_baseline for group in self.groups)


def review_groups(runs: list[dict], baseline: str | None = None) -> Groups:
    """Groups (and with `baseline`, an override set such as 'model=resnet20', the comparison with that group: a
    CifarbenchError if it matches no group or several)."""
    groups = group_runs(runs)
    if baseline:
        compare_to_baseline(groups, baseline)
    return Groups(groups, best_versus_runner_up(groups))


def write_report(
    runs: list[dict],
    out_dir: str | Path,
    sort_by: str = "test_acc",
    descending: bool = True,
    plots: bool = True,
    sources: Iterable[str] = (),
    groups: Groups | None = None,
) -> list[Path]:
    """Write results.md, results.csv, results_groups.csv (when runs repeat a configuration) and (matplotlib
    permitting) the PNG plots; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = groups or review_groups(runs)
    ordered = sort_runs(runs, sort_by, descending)
    plot_paths = write_plots(ordered, out_dir, groups.groups) if plots else []
    markdown_path, csv_path = out_dir / MARKDOWN_FILE, out_dir / CSV_FILE
    best = select_best(ordered)
    group_lines = render_groups_markdown(groups.groups) if groups.shown else []
    markdown_path.write_text(render_markdown(ordered, sources, [path.name for path in plot_paths], group_lines,
                                             groups.verdict))
    write_csv(ordered, csv_path)
    written = [markdown_path, csv_path]
    if groups.shown:
        write_groups_csv(groups.groups, out_dir / GROUPS_CSV_FILE)
        written.append(out_dir / GROUPS_CSV_FILE)
    return [*written, *plot_paths, *(write_best(best, out_dir) if best else [])]
