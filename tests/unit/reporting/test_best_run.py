"""cifarbench.reporting.best_run: the best run of a sweep, named, marked and linked."""

from __future__ import annotations

import json

import pytest

from cifarbench.cli import report as report_cli
from tests.helpers.metrics_files import FAILED, RESNET


def test_the_best_run_is_named_marked_and_its_weights_linked(sweep_dir, tmp_path, capsys):
    weights = sweep_dir / "0_resnet" / "checkpoints" / "best.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"the resnet's weights")
    assert report_cli.main([str(sweep_dir), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "Best run (best): 0_resnet with 95.01% validation accuracy" in out
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["run"] == "0_resnet" and best["selected_on"] == "best_val_acc" and not best["selected_on_test_set"]
    assert best["overrides"] == RESNET["overrides"] and best["metrics"]["test_acc"] == pytest.approx(0.9452)
    assert (sweep_dir / "best.pt").read_bytes() == b"the resnet's weights"
    markdown = (sweep_dir / "results.md").read_text()
    assert "| 0_resnet (best) |" in markdown and "| 1_wrn |" in markdown


def test_without_a_validation_split_the_best_run_is_picked_on_the_test_set_and_says_so(tmp_path, capsys):
    for name, acc in (("0_a", 0.91), ("1_b", 0.93)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "completed", "model": "m", "best": {"test/acc": acc}, "test": {"acc": acc}}))
    report_cli.main([str(tmp_path), "--no-plots"])
    assert "1_b with 93.00% test accuracy (this selects on the test set)" in capsys.readouterr().out
    assert json.loads((tmp_path / "best.json").read_text())["selected_on_test_set"] is True
    assert not (tmp_path / "best.pt").exists()  # that run kept no checkpoint


def test_a_sweep_whose_jobs_all_failed_names_no_best_run(tmp_path, capsys):
    (tmp_path / "0_failed").mkdir()
    (tmp_path / "0_failed" / "metrics.json").write_text(json.dumps(FAILED))
    report_cli.main([str(tmp_path), "--no-plots"])
    assert "No run completed with a result (1 run(s)" in capsys.readouterr().out
    assert not (tmp_path / "best.json").exists()
