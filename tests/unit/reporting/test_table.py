"""cifarbench.reporting.table on hand-written metrics.json files: values, formats, order, failed runs."""

from __future__ import annotations

import csv
import json

import pytest

from cifarbench.cli import report as report_cli
from cifarbench.errors import CifarbenchError
from cifarbench.reporting import summary
from cifarbench.reporting import table as report
from tests.helpers.metrics_files import FAILED, RESNET, RUNS, WRN, parse_terminal_table


def expected_cells(metrics: dict, label: str) -> dict[str, str]:
    """What the terminal and Markdown tables must show for one metrics.json, computed independently."""
    test = metrics.get("test") or {}

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    return {
        "run": label,
        "model": metrics.get("model") or "-",
        "dataset": metrics.get("dataset") or "-",
        "overrides": " ".join(metrics.get("overrides", [])) or "-",
        "status": metrics.get("status", "unknown"),
        "best val acc %": percent((metrics.get("best") or {}).get("val/acc")),
        "selected test acc %": percent(test.get("acc")),
        "final test acc %": percent((metrics.get("final") or {}).get("test/acc")),
        "test top5 %": percent(test.get("top5")),
    }


def test_collect_runs_reads_every_metrics_file(sweep_dir):
    runs = report.collect_runs([sweep_dir])
    assert [run["run"] for run in runs] == list(RUNS)
    resnet = runs[0]
    assert resnet["test_acc"] == RESNET["test"]["acc"]
    assert resnet["params_m"] == pytest.approx(RESNET["params"] / 1e6)
    assert resnet["epochs"] == 3 and resnet["wall_time_s"] == RESNET["wall_time_s"]
    assert runs[3]["status"] == "unknown" and runs[3]["params_m"] is None and runs[3]["history"] == []


def test_collect_runs_lists_jobs_without_metrics_and_unreadable_files(tmp_path):
    killed = tmp_path / "sweep" / "0_model=resnet18"
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text("- model=resnet18\n- dataset=cifar100\n")
    truncated = tmp_path / "sweep" / "1_model=wrn_28_10"
    truncated.mkdir()
    (truncated / "metrics.json").write_text('{"status": "runn')
    missing, unreadable = report.collect_runs([tmp_path / "sweep"])
    assert missing["status"] == "missing" and missing["overrides"] == "model=resnet18 dataset=cifar100"
    assert "no metrics.json" in missing["error"]
    assert unreadable["status"] == "unreadable" and "could not be read" in unreadable["error"]
    assert len(report.failed_runs([missing, unreadable])) == 2


def test_collect_runs_counts_overlapping_directories_once(sweep_dir):
    runs = report.collect_runs([sweep_dir, sweep_dir / "0_resnet"])
    assert len(runs) == len(RUNS)


def test_sort_runs_by_any_column_with_missing_values_last(sweep_dir):
    runs = report.collect_runs([sweep_dir])
    by_acc = [run["run"] for run in report.sort_runs(runs, "test_acc", descending=True)]
    assert by_acc == ["0_resnet", "1_wrn", "3_old", "2_failed"]
    by_acc_asc = [run["run"] for run in report.sort_runs(runs, "test_acc", descending=False)]
    assert by_acc_asc == ["3_old", "1_wrn", "0_resnet", "2_failed"]
    by_params = [run["run"] for run in report.sort_runs(runs, "params_m", descending=False)]
    assert by_params[:2] == ["0_resnet", "1_wrn"]
    by_model = [run["model"] for run in report.sort_runs(runs, "model", descending=False)]
    assert by_model == ["pyramidnet110", "resnet18", "simple_cnn", "wrn_28_10"]
    with pytest.raises(CifarbenchError, match="cannot sort by 'accuracy'"):
        report.sort_runs(runs, "accuracy")


def test_terminal_table_is_aligned_and_shows_the_metrics(sweep_dir, capsys):
    assert report_cli.main([str(sweep_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    titles, rows = parse_terminal_table(out)
    assert titles == [column.title for column in report.COLUMNS]
    assert [row["run"] for row in rows] == ["0_resnet", "1_wrn", "3_old", "2_failed"]
    for row in rows:
        expected = expected_cells(RUNS[row["run"]], row["run"])
        assert {key: row[key] for key in expected} == expected
    resnet = rows[0]
    assert (resnet["params (M)"], resnet["GFLOPs"], resnet["epochs"]) == ("11.2", "0.556", "3")
    assert (resnet["wall time"], resnet["img/s"]) == ("2:03:04", "5121")
    # numbers are right-aligned: the value ends where its column's header ends
    header = out.splitlines()[0]
    resnet_line = out.splitlines()[2]
    end = header.index("selected test acc %") + len("selected test acc %")
    assert resnet_line[end - len("94.52") : end] == "94.52"
    assert "2 of 4 runs did not complete" in out  # the failed one and the old one without a status
    assert "2_failed (failed): NonFiniteLossError: the training loss became nan" in out
    assert "3_old (unknown)" in out


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    table = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip().replace("\\|", "|") for cell in line.strip("|").split(" | ")] for line in table]
    return split[0], split[2:]


def test_markdown_and_csv_hold_the_metrics_json_values(sweep_dir, tmp_path):
    out_dir = tmp_path / "review"
    paths = summary.write_report(report.collect_runs([sweep_dir]), out_dir, "test_acc", plots=False)
    assert paths == [out_dir / "results.md", out_dir / "results.csv", out_dir / "best.json"]

    markdown = (out_dir / "results.md").read_text()
    headers, rows = markdown_rows(markdown)
    assert headers == [column.title for column in report.COLUMNS]
    assert [row[0] for row in rows] == ["0_resnet (best)", "1_wrn", "3_old", "2_failed"]
    for row in rows:
        cells = dict(zip(headers, row))
        cells["run"] = cells["run"].removesuffix(" (best)")
        expected = expected_cells(RUNS[cells["run"]], cells["run"])
        assert {key: cells[key] for key in expected} == expected
    assert "## Failed runs" in markdown
    assert (
        "`2_failed` (failed): NonFiniteLossError: the training loss became nan in epoch 2 \\| lower"
        in markdown
    )

    with open(out_dir / "results.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert list(csv_rows[0]) == list(report.CSV_KEYS)
    by_run = {row["run"]: row for row in csv_rows}
    resnet = by_run["0_resnet"]
    assert float(resnet["test_acc"]) == RESNET["test"]["acc"]
    assert float(resnet["best_val_acc"]) == RESNET["best"]["val/acc"]
    assert float(resnet["final_test_acc"]) == RESNET["final"]["test/acc"]
    assert float(resnet["test_top5"]) == RESNET["test"]["top5"]
    assert float(resnet["params_m"]) * 1e6 == pytest.approx(RESNET["params"])
    assert float(resnet["gflops"]) == RESNET["gflops"]
    assert int(resnet["epochs"]) == RESNET["epochs"]
    assert float(resnet["wall_time_s"]) == RESNET["wall_time_s"]
    assert float(resnet["img_per_s"]) == RESNET["img_per_s"]
    assert resnet["overrides"] == "model=resnet18 dataset=cifar10" and resnet["error"] == ""
    assert by_run["2_failed"]["error"] == FAILED["error"] and by_run["2_failed"]["test_acc"] == ""
    assert by_run["1_wrn"]["final_test_acc"] == ""


def test_overrides_shared_by_every_run_are_stated_once(tmp_path, capsys):
    for name, lr in (("0", "0.1"), ("1", "0.05")):
        (tmp_path / name).mkdir()
        overrides = ["dataset=synthetic", f"optimizer.lr={lr}", "trainer.epochs=1"]
        (tmp_path / name / "metrics.json").write_text(json.dumps(dict(RESNET, overrides=overrides)))
    report_cli.main([str(tmp_path), "--no-plots", "--sort", "run", "--asc"])
    out = capsys.readouterr().out
    _, rows = parse_terminal_table(out)
    assert [row["overrides"] for row in rows] == ["optimizer.lr=0.1", "optimizer.lr=0.05"]
    assert "overrides of every run: dataset=synthetic trainer.epochs=1" in out
    markdown = (tmp_path / "results.md").read_text()
    assert "Overrides of every run: `dataset=synthetic` `trainer.epochs=1`" in markdown
    with open(tmp_path / "results.csv", newline="") as handle:
        full = [row["overrides"] for row in csv.DictReader(handle)]
    assert full == [
        "dataset=synthetic optimizer.lr=0.1 trainer.epochs=1",
        "dataset=synthetic optimizer.lr=0.05 trainer.epochs=1",
    ]


def test_terminal_names_sweep_jobs_by_number_and_cuts_other_long_labels_but_files_keep_them(tmp_path, capsys):
    """A sweep job's directory (`0_dataset.source.test_size=256,dataset=...`) shows as #0 beside the overrides that
    tell it apart (a cut name hid the model); another long label is cut; results.md/.csv keep every name whole."""
    job = "0_dataset.source.test_size=256," + ",".join(f"key{i}=value{i}" for i in range(8))
    other = "a_run_directory_whose_name_is_much_longer_than_forty_characters"
    for name, payload in ((job, dict(RESNET, overrides=["dataset.source.test_size=256", "model=resnet20"])),
                          (other, dict(WRN, overrides=["dataset.source.test_size=256", "model=wrn_28_10"]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(payload))
    report_cli.main([str(tmp_path), "--no-plots"])
    _, rows = parse_terminal_table(capsys.readouterr().out)
    by_overrides = {row["overrides"]: row["run"] for row in rows}
    assert by_overrides == {"model=resnet20": "#0", "model=wrn_28_10": other[: report.TERMINAL_RUN_WIDTH - 3] + "..."}
    assert f"| {job} " in (tmp_path / "results.md").read_text()
    assert job in (tmp_path / "results.csv").read_text()


def test_runs_come_in_job_number_order(tmp_path):
    for job in (10, 2, 1):
        (tmp_path / f"{job}_run").mkdir()
        (tmp_path / f"{job}_run" / "metrics.json").write_text(json.dumps(RESNET))
    runs = report.collect_runs([tmp_path])
    assert [run["run"] for run in runs] == ["1_run", "2_run", "10_run"]
    assert [run["run"] for run in report.sort_runs(runs, "test_acc")] == ["1_run", "2_run", "10_run"]  # ties


def test_an_override_only_some_runs_share_stays_in_their_own_cells(tmp_path, capsys):
    """Three runs: dataset=synthetic is in all of them, trainer.epochs=1 only in the first two."""
    for name, lr, epochs in (("0", "0.1", ["trainer.epochs=1"]), ("1", "0.05", ["trainer.epochs=1"]), ("2", "0.2", [])):
        (tmp_path / name).mkdir()
        overrides = ["dataset=synthetic", f"optimizer.lr={lr}", *epochs]
        (tmp_path / name / "metrics.json").write_text(json.dumps(dict(RESNET, overrides=overrides)))
    report_cli.main([str(tmp_path), "--no-plots", "--sort", "run", "--asc"])
    out = capsys.readouterr().out
    _, rows = parse_terminal_table(out)
    assert [row["overrides"] for row in rows] == ["optimizer.lr=0.1 trainer.epochs=1",
                                                  "optimizer.lr=0.05 trainer.epochs=1", "optimizer.lr=0.2"]
    assert "overrides of every run: dataset=synthetic\n" in out + "\n"
