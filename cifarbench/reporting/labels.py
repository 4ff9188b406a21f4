"""Run labels as tables and plot legends show them: sweep jobs by number, long names cut to a width."""

from __future__ import annotations

TERMINAL_RUN_WIDTH = 40


def job_label(label: str) -> str:
    """A sweep job's directory is named `<n>_<its overrides>`; the overrides column shows those that differ, so the
    terminal shows the job as `#<n>` instead of a name cut off before the override that tells it apart."""
    number, _, rest = label.partition("_")
    return f"#{number}" if number.isdigit() and "=" in rest else label


def shortened(label: str, width: int = TERMINAL_RUN_WIDTH) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."
