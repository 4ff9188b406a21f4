"""cifarbench.reporting.plots: the plots exist, decode and say what they show."""

from __future__ import annotations

import sys

import pytest

from cifarbench.reporting import plots, summary
from cifarbench.reporting import table as report


def test_plots_exist_and_decode(sweep_dir, tmp_path):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    paths = summary.write_report(report.collect_runs([sweep_dir]), tmp_path / "review")
    pngs = [path for path in paths if path.suffix == ".png"]
    assert [path.name for path in pngs] == list(plots.PLOT_FILES)
    for path in pngs:
        assert path.stat().st_size > 0
        with image.open(path) as png:
            png.verify()
        with image.open(path) as png:
            assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 100
    assert "![accuracy_vs_params](accuracy_vs_params.png)" in (tmp_path / "review" / "results.md").read_text()


def test_group_points_one_per_configuration_with_its_repeats(sweep_dir):
    from cifarbench.reporting.groups import group_runs

    runs = report.collect_runs([sweep_dir])
    runs.append(dict(runs[0], run="4_resnet_seed1", test_acc=0.9352,
                     override_list=runs[0]["override_list"] + ["trainer.seed=1"]))
    points = plots.group_points(group_runs(runs), "params_m")
    assert sorted(points) == ["cifar10", "cifar100"]
    (label, params, accuracies), = points["cifar10"]  # fmt: skip
    assert label == "model=resnet18 dataset=cifar10" and params == pytest.approx(11.173962)
    assert sorted(accuracies.values) == [0.9352, 0.9452] and accuracies.mean == pytest.approx(0.9402)


def test_without_matplotlib_the_plots_are_skipped_with_one_line(sweep_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    paths = summary.write_report(report.collect_runs([sweep_dir]), tmp_path / "review")
    assert [path.name for path in paths] == ["results.md", "results.csv", "best.json"]
    assert capsys.readouterr().out.strip() == plots.MATPLOTLIB_MISSING
    assert "pip install cifarbench[plots]" in plots.MATPLOTLIB_MISSING


def test_the_epoch_plot_states_val_only_when_a_run_has_it_and_starts_at_epoch_0(tmp_path):
    pytest.importorskip("matplotlib")
    captured = {}

    def keep(figure, path):
        axes = figure.axes[0]
        captured.update(title=axes.get_title(), xlim=axes.get_xlim())

    run = report.run_row({"status": "completed", "history": [{"epoch": 1, "test/acc": 0.5}]}, tmp_path, "one")
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig
    matplotlib.figure.Figure.savefig = lambda self, path, **kw: keep(self, path)
    try:
        assert plots.plot_epoch_curves([run], tmp_path / "plot.png")
    finally:
        matplotlib.figure.Figure.savefig = original
    assert captured["title"] == "Test accuracy per epoch" and captured["xlim"] == (0, 1.5)


def test_the_log_axis_reaches_a_labelled_tick_on_both_sides_of_the_models():
    """Models from 0.27M to 36.5M parameters: the axis runs from below the 0.2 tick to above the 50 tick, so the
    smallest model sits between labelled ticks (0.2 and 0.5) instead of left of the first one."""
    from cifarbench.reporting.plots import tick_bounds

    low, high = tick_bounds(0.27, 36.5)
    assert 0.15 < low < 0.2 and 50 < high < 60
    assert tick_bounds(1.0, 1.0) == (1.0 / 1.15, 1.0 * 1.15)  # a value on a tick keeps that tick
    low, high = tick_bounds(0.0812, 5.2)
    assert 0.05 / 1.16 < low < 0.05 and 10 < high < 10 * 1.16
