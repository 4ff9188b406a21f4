"""cifarbench.loggers.tensorboard: hparams, confusion matrices, image grids, curves that stay continuous across
kills and resumes, and a writer closed on failure."""

from __future__ import annotations

import io
import json
import signal
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarbench.engine.hooks.evaluation import EpochEvaluation
from cifarbench.engine.trainer import Trainer, TrainingInterrupted
from cifarbench.loggers import tensorboard as tensorboard_logging
from tests.helpers.compare import without_time
from tests.helpers.events import scalars
from tests.helpers.runs import (
    SMALL,
    STEPS,
    reference_run,
    signal_after_step,
    toy_trainer,
)
from tests.helpers.sweep import event_dirs, read_events


def test_the_tensorboard_writer_is_closed_when_a_run_fails(tmp_path, toy_conf, monkeypatch):
    """A bug in the first evaluation: the writer is closed (its thread and file are released, which matters for
    in-process sweeps such as Optuna's) and what was logged before the error is on disk."""
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=3"])
    writer = trainer.log.writer

    def fail(self, trainer):
        raise RuntimeError("a bug in the evaluation")

    monkeypatch.setattr(EpochEvaluation, "evaluate", fail)
    with pytest.raises(RuntimeError, match="a bug in the evaluation"):
        trainer.fit()
    assert writer.file_writer is None, "the SummaryWriter was left open"
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    assert events.Tags()["images"] and events.Tags()["tensors"], events.Tags()


def test_kill_between_epoch_events_and_first_checkpoint_leaves_no_duplicate_curve(tmp_path, monkeypatch):
    """A kill after epoch 1 was logged to TensorBoard but before its last.pt: resume=auto starts fresh, and the
    curves must still show each epoch once."""
    overrides = SMALL + ["dataset.loader=device", "trainer.epochs=2", "trainer.resume=auto"]
    run_dir = tmp_path / "run"

    def killed(self):  # the state on disk at that instant: events and best.pt of epoch 1, no last.pt
        raise SystemExit(-9)

    monkeypatch.setattr(Trainer, "save_last", killed)
    with pytest.raises(SystemExit):
        reference_run(overrides, run_dir)
    monkeypatch.undo()
    first_epoch_end = scalars(run_dir)["train/loss"][0][0]  # the x axis is the optimizer step
    assert not (run_dir / "checkpoints" / "last.pt").exists() and first_epoch_end > 1

    reference_run(overrides, run_dir)
    curves = scalars(run_dir)
    for tag, points in curves.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"
    for tag in ("train/loss", "train/acc", "lr", "test/loss", "test/acc"):
        assert [step for step, _ in curves[tag]] == [first_epoch_end, 2 * first_epoch_end], tag


def test_rerunning_a_finished_run_duplicates_no_curve(tmp_path):
    """The same command again (a requeued job that had already finished, or one killed during its final test):
    the end-of-run scalars (SWA, hparams), logged at the last epoch, must not appear twice."""
    overrides = SMALL + ["dataset.source.train_size=48", "dataset.loader=device", "trainer.epochs=2",
                         "trainer.resume=auto", "+callbacks=swa", "callbacks.swa.start_epoch=2",
                         "callbacks.swa.anneal_epochs=1", "callbacks.swa.lr=0.02"]
    run_dir = tmp_path / "run"
    first = json.loads((reference_run(overrides, run_dir) / "metrics.json").read_text())
    reference_run(overrides, run_dir)
    again = json.loads((run_dir / "metrics.json").read_text())
    assert without_time(again["history"]) == without_time(first["history"]) and again["test"] == first["test"]
    for tag, points in scalars(run_dir).items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"TensorBoard tag {tag} repeats an epoch: steps {steps}"


# -------------------------------------------------------------------------------- step curves
def test_step_resolution_curves_show_warmup_then_cosine_and_stay_continuous_across_a_resume(
        tmp_path, toy_conf, monkeypatch):
    extra = ["trainer.epochs=3", "trainer.log_every_n_steps=2", "scheduler.warmup_epochs=1", "trainer.resume=auto"]
    toy_trainer(toy_conf, tmp_path / "straight", extra).fit()
    straight = scalars(tmp_path / "straight")
    lr = straight["lr_step"]
    assert [s for s, _ in lr] == list(range(2, 3 * STEPS + 1, 2)) and len(straight["train/loss_step"]) == len(lr)
    values = [v for _, v in lr]
    peak = values.index(max(values))
    assert values[:peak + 1] == sorted(values[:peak + 1]) and values[peak:] == sorted(values[peak:], reverse=True)
    assert lr[peak][0] in (STEPS, STEPS + 2) and values[0] < 0.2 * max(values)
    assert [s for s, _ in straight["train/loss"]] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert straight["best/epoch"][-1][1] == json.loads((tmp_path / "straight" / "metrics.json").read_text())[
        "best"]["epoch"]

    signal_after_step(monkeypatch, signal.SIGUSR1, epoch=1, step=7)
    with pytest.raises(TrainingInterrupted):
        toy_trainer(toy_conf, tmp_path / "resumed", extra).fit()
    monkeypatch.undo()
    # TensorBoard reads a folder's event files in name order, whose first field is the time in whole seconds: two
    # sessions of one process within a second could be read out of order (separate runs never are).
    time.sleep(1.1)
    toy_trainer(toy_conf, tmp_path / "resumed", extra).fit()
    resumed = scalars(tmp_path / "resumed")
    for tag in ("lr_step", "train/loss_step", "train/acc_step", "train/loss", "lr", "epoch"):
        assert [s for s, _ in resumed[tag]] == [s for s, _ in straight[tag]], tag
    assert [v for _, v in resumed["lr_step"]] == pytest.approx(values)


def test_hparams_are_written_into_the_writers_own_event_dir(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    hparams = tensorboard_logging.hparams_from_run(
        {
            "optimizer": {"lr": 0.1, "weight_decay": 5e-4},
            "trainer": {"epochs": 3, "seed": 0, "precision": "32"},
            "augment": {"crop": {"padding": 4}, "flip": None, "cutout": {"length": 16}},
        },
        overrides=[
            "model=wrn_28_10",
            "optimizer.lr=0.05",
            "augment=[standard,cutout]",
            "+trainer.compile=true",
        ],
        choices={"model": "wrn_28_10", "dataset": "cifar10", "hydra/launcher": "basic", "experiment": None},
    )
    assert hparams == {
        "optimizer.lr": 0.05, "optimizer.weight_decay": 5e-4, "trainer.epochs": 3, "trainer.seed": 0,
        "trainer.precision": "32", "model": "wrn_28_10", "dataset": "cifar10", "augment": "[standard,cutout]",
        "trainer.compile": True, "augment.ops": "[crop,cutout]",
    }  # fmt: skip
    metrics = tensorboard_logging.hparams_metrics({"best": {"val/acc": 0.95}, "test": {"acc": 0.94, "top5": 0.99}})
    assert metrics["hparams/selected_test_acc"] == 0.94 and metrics["hparams/gflops"] is None

    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_scalar("val/acc", 0.9, 3)
    tensorboard_logging.log_hparams(writer, hparams, metrics, step=3)
    writer.close()

    assert event_dirs(tmp_path) == {tmp_path}  # no sub-run
    events = read_events(tmp_path)
    content = events.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == list(metrics)
    assert {info.name for info in experiment.hparam_infos} == set(hparams)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.05
    assert start.hparams["model"].string_value == "wrn_28_10"
    assert start.hparams["trainer.compile"].string_value == "True"
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == 1  # STATUS_SUCCESS
    scalars = events.Tags()["scalars"]
    assert "hp_metric" not in scalars
    assert {"hparams/best_val_acc", "hparams/selected_test_acc", "hparams/test_top5"} <= set(scalars)
    assert "hparams/gflops" not in scalars  # None is declared, never written
    (value,) = events.Scalars("hparams/selected_test_acc")
    assert value.step == 3 and value.value == pytest.approx(0.94)


def test_failed_run_shows_as_failed_in_hparams(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_hparams(writer, {"model": "resnet18"}, {"hparams/selected_test_acc": None},
                                        status="failed")
    content = read_events(tmp_path).PluginTagToContent("hparams")["_hparams_/session_end_info"]
    assert (
        plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status
        == api_pb2.STATUS_FAILURE
    )


@pytest.mark.parametrize("use_matplotlib", [True, False], ids=["matplotlib", "pure-torch"])
def test_confusion_matrix_image_and_per_class_text(tmp_path, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    confusion = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 5, 5]])
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_confusion_matrix(
            writer, confusion, ["cat", "dog", "frog"], step=7, use_matplotlib=use_matplotlib
        )
    events = read_events(tmp_path)
    assert event_dirs(tmp_path) == {tmp_path}
    (image,) = events.Images("test/confusion_matrix")
    assert image.step == 7
    with Image.open(io.BytesIO(image.encoded_image_string)) as picture:
        assert picture.size[0] >= 200 and picture.size[1] >= 200
    (text,) = events.Tensors("test/per_class_accuracy/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| cat | 80.00 | 8 | 10 |" in table and "| frog | 50.00 | 5 | 10 |" in table


def test_confusion_heatmap_without_matplotlib_is_a_uint8_image():
    image = tensorboard_logging.confusion_heatmap(torch.eye(100, dtype=torch.int64) * 3)
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) >= 256
    assert image[:, 0, 0].tolist() != image[:, 0, -1].tolist()  # the diagonal is darker than the rest


def test_image_grid_and_config_text(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        tensorboard_logging.log_image_grid(writer, images)
        tensorboard_logging.log_config_text(writer, "model:\n  depth: 20\n")
    events = read_events(tmp_path)
    (grid,) = events.Images(tensorboard_logging.AUGMENTED_SAMPLES_TAG)
    assert (grid.width, grid.height) == (4 * 30 + 2, 3 * 30 + 2)  # 4 per row, 2 px padding
    (text,) = events.Tensors("config/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "```yaml\nmodel:\n  depth: 20\n```"
