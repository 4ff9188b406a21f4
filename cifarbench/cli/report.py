"""`python -m cifarbench.report DIR [DIR ...]`: the results table and plots of every run below the directories
(see cifarbench.reporting.table for what is written)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifarbench.errors import CifarbenchError, exit_on_user_error
from cifarbench.reporting.group_table import render_groups_terminal
from cifarbench.reporting.summary import review_groups, write_report
from cifarbench.reporting.table import (
    COLUMN_KEYS,
    METRICS_FILE,
    best_line,
    collect_runs,
    render_terminal,
    sort_runs,
)


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
    parser.add_argument(
        "--baseline", metavar="OVERRIDES",
        help="compare every group with this one: overrides that pick out one group, e.g. 'model=resnet20' "
             "(difference of mean test accuracy, its 95%% CI and Welch's p-value)",
    )
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
    groups = review_groups(runs, args.baseline)  # a baseline that picks out no group, or several, stops here
    paths = write_report(runs, out_dir, args.sort, args.descending, args.plots, sources=args.dirs, groups=groups)
    print(render_terminal(sort_runs(runs, args.sort, args.descending)))
    print()
    if groups.shown:
        print(render_groups_terminal(groups.groups, groups.verdict))
        print()
    print(best_line(runs))
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
