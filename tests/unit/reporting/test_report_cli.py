"""The report entry point in-process: default output folder, sorting and errors."""

from __future__ import annotations

import pytest

from cifarbench.cli import report as report_cli
from tests.helpers.metrics_files import parse_terminal_table


def test_cli_default_out_dir_and_sort_option(sweep_dir, capsys):
    report_cli.main(
        [str(sweep_dir / "0_resnet"), str(sweep_dir / "1_wrn"), "--sort", "params_m", "--asc", "--no-plots"]
    )
    out = capsys.readouterr().out
    assert (sweep_dir / "results.md").is_file() and (sweep_dir / "results.csv").is_file()
    _, rows = parse_terminal_table(out)
    assert [row["run"] for row in rows] == ["0_resnet", "1_wrn"]


def test_cli_errors_exit_2_with_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as missing_dir:
        report_cli.main([str(tmp_path / "nope")])
    assert missing_dir.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as empty:
        report_cli.main([str(tmp_path)])
    assert empty.value.code == 2
    assert "no metrics.json below" in capsys.readouterr().err
