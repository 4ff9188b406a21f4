"""The report's group tables (see cifarbench.reporting.groups): a compact one to read (mean ± half the 95% CI, the
difference from the baseline, its p-value) and a full one with every statistic, in the terminal, results.md and
results_groups.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from cifarbench.reporting.groups import AGGREGATED, ALPHA, CONFIDENCE, Group, Summary, ci_text

GROUPS_CSV_FILE = "results_groups.csv"
NOT_SIGNIFICANT = "n.s."
PERCENT = {"test_acc", "final_test_acc", "best_val_acc"}


def _value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key in PERCENT:
        return f"{100 * value:.2f}"
    if key == "img_per_s":
        return f"{value:.0f}"
    return f"{value:.1f}"


def summary_text(key: str, summary: Summary) -> str:
    if key in PERCENT:
        return ci_text(summary)
    return ci_text(summary, scale=1.0, decimals=0 if key == "img_per_s" else 1)


def comparison_cells(group: Group) -> tuple[str, str, str]:
    """(difference ± its CI, the CI, p) in points of accuracy; the baseline says so; not significant is marked."""
    if group.is_baseline:
        return "baseline", "", ""
    comparison = group.comparison
    if comparison is None:
        return "-", "-", "-"
    difference = f"{100 * comparison.difference:+.2f}"
    if comparison.significant is False:
        difference += f" ({NOT_SIGNIFICANT})"
    interval = "-" if comparison.ci is None else f"[{100 * comparison.ci[0]:+.2f}, {100 * comparison.ci[1]:+.2f}]"
    p_value = "-" if comparison.p_value is None else f"{comparison.p_value:.3g}"
    return difference, interval, p_value


def compact_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    keys = [key for key in AGGREGATED if any(group.summaries[key].n for group in groups)]
    headers = ["group", "n", *(f"{AGGREGATED[key]}{' %' if key in PERCENT else ''}" for key in keys)]
    with_baseline = any(group.is_baseline for group in groups)
    if with_baseline:
        metric = next((group.comparison.metric for group in groups if group.comparison), "test_acc")
        headers += [f"Δ {AGGREGATED[metric]} (points)", f"{CONFIDENCE:.0%} CI of Δ", "p (Welch)"]
    rows = []
    for group in groups:
        row = [group.label, str(group.n), *(summary_text(key, group.summaries[key]) for key in keys)]
        if with_baseline:
            row += list(comparison_cells(group))
        rows.append(row)
    return headers, rows


def statistics_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Long form: one row per group and metric, every statistic."""
    headers = ["group", "metric", "n", "mean", "std", f"{CONFIDENCE:.0%} CI low", f"{CONFIDENCE:.0%} CI high", "min",
               "max"]
    rows = []
    for group in groups:
        for key, title in AGGREGATED.items():
            summary = group.summaries[key]
            if not summary.n:
                continue
            ci = summary.ci or (None, None)
            rows.append([group.label, title + (" %" if key in PERCENT else ""), str(summary.n),
                         *(_value(key, value) for value in (summary.mean, summary.std, ci[0], ci[1], summary.min,
                                                            summary.max))])
    return headers, rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    rule = ["---" if index == 0 else "---:" for index in range(len(headers))]
    return [f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |"] + [
        f"| {' | '.join(cell.replace('|', chr(92) + '|') for cell in row)} |" for row in rows]


HOW_TO_READ = (
    f"Each group is one configuration run several times (seeds, folds). A cell reads mean ± half the {CONFIDENCE:.0%} "
    "confidence interval of the mean (Student t, n - 1 degrees of freedom); with n = 1 there is no interval. "
    "Δ is the group's mean accuracy minus the baseline's, in points, with its CI and the p-value of Welch's t-test; "
    f"'{NOT_SIGNIFICANT}' marks a difference that is not significant at {ALPHA:g}: it may be seed noise, so do not "
    "rank those two configurations by it. 'selected' is the checkpoint the run picked on its monitored split; "
    "'final' is the last epoch's model."
)


def render_groups_markdown(groups: list[Group]) -> list[str]:
    lines = ["## Groups", "", HOW_TO_READ, ""]
    lines += markdown_table(*compact_rows(groups)) + ["", "### Every statistic", ""]
    return lines + markdown_table(*statistics_rows(groups)) + [""]


def render_groups_terminal(groups: list[Group], verdict: str | None) -> str:
    headers, rows = compact_rows(groups)
    widths = [max(len(text) for text in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                         for index, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(headers), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]
    return "\n".join(lines + ([verdict] if verdict else []))


def write_groups_csv(groups: list[Group], path: Path) -> None:
    """One row per group: n, mean, std, CI and min/max of every metric (raw values: accuracies as fractions),
    and the comparison with the baseline where there is one."""
    columns = ["group", "n"]
    for key in AGGREGATED:
        columns += [f"{key}_{stat}" for stat in ("n", "mean", "std", "ci95_low", "ci95_high", "min", "max")]
    columns += ["baseline", "diff_metric", "diff_mean", "diff_ci95_low", "diff_ci95_high", "p_value", "significant"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for group in groups:
            row: list = [group.label, group.n]
            for key in AGGREGATED:
                summary = group.summaries[key]
                ci = summary.ci or (None, None)
                row += [summary.n, summary.mean, summary.std, ci[0], ci[1], summary.min, summary.max]
            comparison = group.comparison
            row += [group.is_baseline] + ([comparison.metric, comparison.difference,
                                          *(comparison.ci or (None, None)), comparison.p_value,
                                          comparison.significant] if comparison else [None] * 6)
            writer.writerow(["" if value is None else value for value in row])
