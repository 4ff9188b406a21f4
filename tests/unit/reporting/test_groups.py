"""cifarbench.reporting.groups: the statistics of repeated runs against values worked out by hand, the baseline
comparison, and a group of three real (tiny) runs made by trainer.repeats=3."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from cifarbench.cli import report as report_cli
from cifarbench.reporting import table as report
from cifarbench.reporting.groups import Summary, best_versus_runner_up, compare_to_baseline, group_runs, welch
from tests.helpers.cli import cli

# Student's t with 2 degrees of freedom has a closed form, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so its 97.5% quantile
# solves t / sqrt(2 + t^2) = 0.95: t^2 = 2 x 0.95^2 / (1 - 0.95^2).
T975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3027


def test_the_t_quantile_worked_out_by_hand_is_the_textbook_one():
    assert T975_DF2 == pytest.approx(4.302653, abs=1e-6)  # the value every t table prints


def test_summary_of_three_accuracies_by_hand():
    summary = Summary([0.90, 0.92, 0.94])
    # mean 0.92; deviations -0.02, 0, 0.02: sample variance (0.0004 + 0.0004) / 2 = 0.0004, std 0.02
    assert (summary.n, summary.mean, summary.min, summary.max) == (3, pytest.approx(0.92), 0.90, 0.94)
    assert summary.std == pytest.approx(0.02)
    half = T975_DF2 * 0.02 / math.sqrt(3)  # t x standard error of the mean = 0.049683
    assert summary.ci == pytest.approx((0.92 - half, 0.92 + half))
    assert half == pytest.approx(0.049683, abs=1e-6)
    # One run: a mean, no spread and no interval.
    assert (Summary([0.9]).std, Summary([0.9]).ci) == (None, None)


def test_welch_against_a_constant_baseline_by_hand():
    """Against a baseline with no spread Welch's degrees of freedom are n - 1 = 2, where t has a closed form."""
    group, baseline = [0.90, 0.92, 0.94], [0.85, 0.85, 0.85]
    se = math.sqrt(0.0004 / 3)
    t = 0.07 / se  # 6.062
    comparison = welch(group, baseline, "test_acc")
    assert comparison.difference == pytest.approx(0.07)
    assert comparison.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)  # two-sided: 0.0262
    assert comparison.ci == pytest.approx((0.07 - T975_DF2 * se, 0.07 + T975_DF2 * se))
    assert comparison.significant is True
    assert welch([0.90, 0.92, 0.94], [0.91, 0.92, 0.93], "test_acc").significant is False  # the same mean
    assert welch([0.9], [0.8, 0.85], "test_acc").p_value is None  # one run: nothing to test


def runs_of(groups: dict[str, list[float]], tmp_path: Path) -> list[dict]:
    """Report rows as collect_runs makes them: one completed run per accuracy, the seed as an override."""
    rows = []
    for label, accuracies in groups.items():
        for seed, accuracy in enumerate(accuracies):
            payload = {"status": "completed", "model": label.split("=")[1], "dataset": "cifar10",
                       "overrides": [label, f"trainer.seed={seed}"], "test": {"acc": accuracy}}
            rows.append(report.run_row(payload, tmp_path / f"{label}_{seed}", f"{label}_{seed}"))
    return rows


def test_groups_form_over_seeds_and_compare_with_the_baseline(tmp_path):
    runs = runs_of({"model=resnet20": [0.85, 0.85, 0.85], "model=resnet56": [0.90, 0.92, 0.94],
                    "model=resnet110": [0.91, 0.92, 0.93]}, tmp_path)
    groups = group_runs(runs)
    assert [(group.label, group.n) for group in groups] == [("model=resnet20", 3), ("model=resnet56", 3),
                                                              ("model=resnet110", 3)]
    baseline = compare_to_baseline(groups, "model=resnet20")
    assert baseline is groups[0] and baseline.is_baseline and baseline.comparison is None
    assert groups[1].comparison.difference == pytest.approx(0.07) and groups[1].comparison.significant
    # resnet56 and resnet110 have the same mean: the best is not significantly better than the runner-up.
    verdict = best_versus_runner_up(groups)
    assert "NOT significantly better" in verdict and "'model=resnet56'" in verdict and "'model=resnet110'" in verdict


@pytest.mark.parametrize("selector, message", [
    ("model=vgg16", "--baseline 'model=vgg16' matches no group of completed runs; the groups are: 'model=resnet20'"),
    ("dataset=cifar10", "--baseline 'dataset=cifar10' matches 2 groups"),
    ("resnet20", "'resnet20' is not key=value"),
])
def test_a_baseline_that_picks_no_group_or_several_is_one_line(selector, message, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for name, model, accuracy in (("a", "resnet20", 0.8), ("b", "resnet56", 0.9)):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "metrics.json").write_text(json.dumps(
            {"status": "completed", "model": model, "dataset": "cifar10", "test": {"acc": accuracy},
             "overrides": [f"model={model}", "dataset=cifar10"]}))
    with pytest.raises(SystemExit) as exited:
        report_cli.main([str(sweep), "--baseline", selector, "--no-plots"])
    assert exited.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (sweep / "results.md").exists()  # refused before anything was written


def test_the_tables_mark_a_difference_that_is_not_significant(tmp_path):
    from cifarbench.reporting.summary import review_groups, write_report

    runs = runs_of({"model=resnet20": [0.85, 0.85, 0.85], "model=resnet56": [0.90, 0.92, 0.94],
                    "model=resnet110": [0.84, 0.85, 0.86]}, tmp_path)
    review = review_groups(runs, "model=resnet20")
    write_report(runs, tmp_path / "out", plots=False, groups=review)
    markdown = (tmp_path / "out" / "results.md").read_text()
    rows = {}  # the compact table's rows (the first of each group's)
    for line in markdown.splitlines():
        if line.startswith("| model="):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "| 92.00 ± 4.97 |" in rows["model=resnet56"] and "+7.00 |" in rows["model=resnet56"]
    assert "+0.00 (n.s.)" in rows["model=resnet110"] and "| baseline |" in rows["model=resnet20"]
    with open(tmp_path / "out" / "results_groups.csv") as handle:
        table = {row["group"]: row for row in csv.DictReader(handle)}
    assert float(table["model=resnet56"]["test_acc_std"]) == pytest.approx(0.02)
    assert table["model=resnet110"]["significant"] == "False" and table["model=resnet20"]["baseline"] == "True"


@pytest.mark.slow
def test_three_repeats_of_one_config_are_one_group_of_real_runs(tmp_path):
    """trainer.repeats=3: three run directories with seeds 0, 1, 2, which the report aggregates into one row whose
    statistics are those of the three metrics.json files."""
    args = ["model=simple_cnn", "model.channels=[8,8]", "model.hidden=16", "dataset=synthetic",
            "dataset.source.train_size=64", "dataset.source.test_size=200", "trainer.batch_size=16",
            "trainer.epochs=1", "trainer.device=cpu",
            "trainer.progress_bar=false", "trainer.repeats=3", f"hydra.run.dir={tmp_path / 'job'}"]
    done = cli("cifarbench.train", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracies = []
    for index in range(3):
        run_dir = tmp_path / "job" / f"repeat_{index}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and f"trainer.seed={index}" in metrics["overrides"]
        assert f"seed: {index}\n" in (run_dir / "config.yaml").read_text()
        accuracies.append(metrics["test"]["acc"])
    assert len(set(accuracies)) > 1, "three seeds trained to the same accuracy: the seed did not reach the run"
    shown = cli("cifarbench.report", [str(tmp_path / "job"), "--no-plots"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    with open(tmp_path / "job" / "results_groups.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    summary = Summary(accuracies)
    assert int(row["n"]) == 3 and float(row["test_acc_mean"]) == pytest.approx(sum(accuracies) / 3)
    assert float(row["test_acc_ci95_low"]) == pytest.approx(summary.mean - T975_DF2 * summary.std / math.sqrt(3))
    assert float(row["test_acc_min"]) == min(accuracies) and float(row["test_acc_max"]) == max(accuracies)


def test_the_folds_of_one_configuration_are_one_group(tmp_path):
    rows = []
    for model in ("resnet20", "resnet56"):
        for fold in range(3):
            payload = {"status": "completed", "model": model, "dataset": "cifar10", "test": {"acc": 0.8 + fold / 100},
                       "overrides": [f"model={model}", "dataset.folds=3", f"dataset.fold={fold}"]}
            rows.append(report.run_row(payload, tmp_path / f"{model}_{fold}", f"{model}_{fold}"))
    groups = group_runs(rows)
    assert [(group.label, group.n) for group in groups] == [("model=resnet20", 3), ("model=resnet56", 3)]
    assert groups[0].summaries["test_acc"].mean == pytest.approx(0.81)


def test_a_baseline_key_that_no_override_names_is_matched_in_the_runs_config(tmp_path):
    """Runs grouped by their resolved config.yaml: --baseline 'optimizer.lr=0.1' finds the group whose config holds
    it, though no run overrode it on the command line."""
    rows = []
    for lr in (0.1, 0.05):
        for seed in range(2):
            run_dir = tmp_path / f"lr{lr}_{seed}"
            run_dir.mkdir()
            (run_dir / "config.yaml").write_text(f"optimizer:\n  lr: {lr}\ntrainer:\n  seed: {seed}\n")
            payload = {"status": "completed", "model": "resnet20", "dataset": "cifar10", "overrides": [],
                       "test": {"acc": 0.8 + lr + seed / 100}}
            rows.append(report.run_row(payload, run_dir, run_dir.name))
    groups = group_runs(rows)
    assert [group.n for group in groups] == [2, 2]  # the seeds differ, the configs otherwise not
    baseline = compare_to_baseline(groups, "optimizer.lr=0.1")
    assert baseline is groups[0] and groups[1].comparison.difference == pytest.approx(-0.05)


def test_a_run_stored_before_some_config_keys_existed_groups_with_todays_runs_of_its_config(tmp_path):
    """A sweep whose seed 0 ran under an older cifarbench (no dataset.split_seed/folds/fold, no trainer.seeds) and
    whose later seeds ran under today's: one group, as a resume reads the old config. A real difference still splits."""
    older = "dataset:\n  name: cifar10\n  val_size: null\noptimizer:\n  lr: 0.1\ntrainer:\n  seed: 0\n"
    today = ("dataset:\n  name: cifar10\n  val_size: null\n  split_seed: 0\n  folds: null\n  fold: 0\n"
             "optimizer:\n  lr: {lr}\ntrainer:\n  seed: {seed}\n"
             "  seeds: {{init: {seed}, data: {seed}, augment: {seed}}}\n"
             "  init_from: null\n  target_acc: null\n  stop_at_target: false\n")
    configs = [older, today.format(lr=0.1, seed=1), today.format(lr=0.1, seed=2), today.format(lr=0.05, seed=0)]
    rows = []
    for index, text in enumerate(configs):
        run_dir = tmp_path / f"run{index}"
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(text)
        payload = {"status": "completed", "model": "airbench94", "dataset": "cifar10", "overrides": [],
                   "test": {"acc": 0.90 + index / 100}}
        rows.append(report.run_row(payload, run_dir, run_dir.name))
    groups = group_runs(rows)
    assert sorted(group.n for group in groups) == [1, 3]
    three = next(group for group in groups if group.n == 3)
    assert sorted(run["run"] for run in three.runs) == ["run0", "run1", "run2"]
    assert three.summaries["test_acc"].mean == pytest.approx(0.91)
