"""A researcher's day: resume that means what it says, progress off a terminal, step-resolution curves, config
mistakes that leave nothing behind, and the debug group."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, compose_config, signal_after_step, toy_trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarbench import checkpoint
from cifarbench.engine.trainer import TrainingInterrupted
from cifarbench.errors import CheckpointError, ResumeRefusedError

# 256 toy images in batches of 16: 16 optimizer steps per epoch.
STEPS = 16


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ------------------------------------------------------------------------------------------- resume (item 2)
def test_more_epochs_on_resume_extend_the_schedule_instead_of_training_at_lr_0(tmp_path, toy_conf, caplog):
    run_dir = tmp_path / "run"
    toy_trainer(toy_conf, run_dir, ["trainer.epochs=2", "trainer.log_every_n_steps=2"]).fit()
    caplog.set_level(logging.INFO, logger="cifarbench")
    extended = toy_trainer(toy_conf, run_dir, ["trainer.epochs=3", "trainer.log_every_n_steps=2"])
    # The cosine schedule of a 3-epoch run at step 32 of 48, not the end of the 2-epoch one (lr 0).
    expected = 0.1 * 0.5 * (1 + math.cos(math.pi * 2 * STEPS / (3 * STEPS)))
    assert extended.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert "extending this run from 2 to 3 epochs" in caplog.text
    result = extended.fit()
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    lr_steps = dict(scalars(run_dir)["lr_step"])
    step = 2 * STEPS + 2  # epoch 3 trains on the 3-epoch cosine (the lr of step s is the factor at s - 1)
    assert lr_steps[step] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (step - 1) / (3 * STEPS))))
    assert len(result["sessions"]) == 2 and result["sessions"][1]["extended"]["from_epochs"] == 2
    # Wall time covers both sessions, not only the last one.
    assert result["wall_time_s"] >= sum(s["wall_time_s"] for s in result["sessions"]) > result["session_wall_time_s"]
    assert "epochs: 3" in (run_dir / "config.yaml").read_text()


def test_a_resume_with_a_changed_config_is_refused_and_the_run_keeps_its_record(tmp_path, toy_conf):
    run_dir = tmp_path / "run"
    toy_trainer(toy_conf, run_dir, ["trainer.epochs=2"]).fit()
    (run_dir / "config.yaml").write_text("the run's own record\n")
    changes = {"trainer.epochs: 2 -> 1": ["trainer.epochs=1"],
               "optimizer.lr: 0.1 -> 0.5": ["trainer.epochs=2", "optimizer.lr=0.5"]}
    for shown, overrides in changes.items():
        with pytest.raises(ResumeRefusedError) as refused:
            toy_trainer(toy_conf, run_dir, overrides)
        message = str(refused.value)
        assert shown in message and "trainer.init_from=" in message and "\n" not in message
    assert (run_dir / "config.yaml").read_text() == "the run's own record\n"
    # Watching differently is not a different run: bars, log frequency, threads, workers may change.
    watched = toy_trainer(toy_conf, run_dir, ["trainer.epochs=2", "trainer.log_every_n_steps=3",
                                              "trainer.num_threads=2", "dataset.num_workers=1"])
    assert watched.state.epoch == 2


def test_a_refused_resume_from_the_cli_leaves_config_overrides_and_metrics_as_they_were(tmp_path):
    run = ["dataset=synthetic", "model=simple_cnn", "dataset.source.train_size=64", "dataset.source.test_size=32",
           "trainer.batch_size=32", "trainer.device=cpu", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, "-m", "cifarbench.train", *run], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {name: (tmp_path / "run" / name).read_bytes()
            for name in ("config.yaml", ".hydra/overrides.yaml", ".hydra/config.yaml", "metrics.json")}
    again = subprocess.run([sys.executable, "-m", "cifarbench.train", *run, "optimizer.lr=0.3"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    errors = [line for line in (again.stdout + again.stderr).splitlines() if "optimizer.lr: 0.1 -> 0.3" in line]
    assert len(errors) == 1 and errors[0].startswith("cifarbench: error: "), again.stdout + again.stderr
    assert {name: (tmp_path / "run" / name).read_bytes() for name in kept} == kept


def test_init_from_starts_a_fresh_run_from_saved_weights_and_names_a_misfit(tmp_path, toy_conf):
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1"]).fit()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    saved = checkpoint.load_checkpoint(best)["model"]
    tuned = toy_trainer(toy_conf, tmp_path / "tuned", [f"trainer.init_from={best}", "optimizer.lr=0.01"])
    assert tuned.state.epoch == 0 and tuned.state.global_step == 0
    for name, tensor in tuned.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    with pytest.raises(CheckpointError, match=r"trainer.init_from: .*must match"):
        toy_trainer(toy_conf, tmp_path / "other", [f"trainer.init_from={best}", "dataset.num_classes=5"])


# ------------------------------------------------------------------------------------ progress (item 3)
def test_progress_lines_appear_inside_an_epoch_off_a_terminal(tmp_path, toy_conf, caplog):
    caplog.set_level(logging.INFO, logger="cifarbench")
    assert not sys.stderr.isatty()
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.log_every_n_steps=4",
                                             "trainer.progress_bar=true"]).fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1 step ")]
    assert [line.split()[3] for line in lines] == ["4/16", "8/16", "12/16"], lines
    assert all(" lr " in line and " img/s " in line and "epoch ETA" in line for line in lines)
    messages = caplog.text
    assert f"run directory: {(tmp_path / 'run').resolve()}" in messages
    assert f"tensorboard --logdir {(tmp_path / 'run').resolve()}" in messages
    assert f"best weights: {(tmp_path / 'run').resolve() / 'checkpoints' / 'best.pt'}" in messages


def test_a_slow_epoch_prints_a_line_every_progress_interval_between_log_steps(tmp_path, toy_conf, caplog):
    caplog.set_level(logging.INFO, logger="cifarbench")
    toy_trainer(toy_conf, tmp_path / "run", ["trainer.epochs=1", "trainer.log_every_n_steps=1000",
                                             "trainer.progress_every_s=0.000001"]).fit()
    steps = [r.getMessage().split()[3] for r in caplog.records if r.getMessage().startswith("epoch 1/1 step ")]
    assert steps == [f"{i}/16" for i in range(1, 16)]


# -------------------------------------------------------------------------------- step curves (item 4)
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


# ------------------------------------------------------------------------ config mistakes (item 5)
def test_a_typo_stops_before_a_run_directory_exists_with_one_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cifarbench.train", "dataset=synthetic", "+trainer.epoch=3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert output.count("did you mean trainer.epochs?") == 1, output
    assert proc.stderr.startswith("cifarbench: error: ") and "Traceback" not in output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ debug (item 7)
def test_debug_fast_runs_a_few_batches_and_keeps_no_checkpoint(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["debug=fast", "trainer.eval_batch_size=16"])
    result = trainer.fit()
    assert result["epochs"] == 1 and trainer.state.global_step == 2
    assert result["test"] is not None and trainer.evaluate_split("test")["count"] == 32  # 2 batches of 16
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_debug_limit_shortens_every_epoch_and_the_schedule_with_it(tmp_path, toy_conf):
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["debug=limit", "trainer.limit_train_batches=5"])
    result = trainer.fit()
    assert result["epochs"] == 3 and trainer.state.global_step == 15
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ended with the run


def test_debug_overfit_memorises_the_same_two_batches(tmp_path, toy_conf):
    cfg = compose_config(["debug=overfit"])
    assert dict(cfg.augment) == {} and cfg.mix.mixup_alpha == 0 and cfg.trainer.overfit_batches == 2
    trainer = toy_trainer(toy_conf, tmp_path / "run", ["debug=overfit", "+model.width=32"])
    assert len(trainer.data.train) == 32 and trainer.monitor == "val/acc"
    assert torch.equal(trainer.data.val.images, trainer.data.train.images)
    result = trainer.fit()
    assert result["best"]["val/acc"] >= 0.9, result["history"][-1]


def test_in_a_terminal_log_lines_go_through_tqdm_instead_of_onto_the_bar(tmp_path):
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from cifarbench.loggers.run_log import RunLog

    run_log = RunLog(tmp_path, progress_bar=True)
    run_log.show_bars = True  # as on a terminal
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    try:
        with run_log.redirect_logging():
            assert any(isinstance(h, _TqdmLoggingHandler) for h in root.handlers) and console not in root.handlers
        assert console in root.handlers
    finally:
        root.removeHandler(console)
        run_log.close()


def test_evaluate_has_its_own_help(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cifarbench.evaluate", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "cifarbench.evaluate: test a trained checkpoint" in proc.stdout and "checkpoint: ???" in proc.stdout
    assert "model:" not in proc.stdout and "optimizer" not in proc.stdout  # no training groups


# ------------------------------------------------------------------------------- image folders (item 10)
def test_an_image_folder_that_fits_trains_through_the_device_loader(tmp_path, toy_conf, caplog):
    from PIL import Image

    from cifarbench.data.device_loader import DeviceLoader
    from cifarbench.data.torch_loader import TorchLoader

    for split, count in (("train", 32), ("test", 8)):
        for label, colour in (("cat", 40), ("dog", 220)):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(count // 2):
                Image.new("RGB", (20, 24), (colour, i, 0)).save(tmp_path / "images" / split / label / f"{i}.png")
    caplog.set_level(logging.INFO, logger="cifarbench")
    folder = [f"hydra.searchpath=[file://{toy_conf}]", "model=tiny_conv", "dataset=imagefolder",
              f"dataset.source.root={tmp_path / 'images'}", "dataset.num_workers=0", "trainer.device=cpu",
              f"paths.data_dir={tmp_path / 'data'}", "trainer.batch_size=8", "trainer.progress_bar=false"]

    def trainer(run: str, extra=()):
        from cifarbench.engine.trainer import Trainer

        return Trainer(compose_config(folder + list(extra)), tmp_path / run, {})

    fits = trainer("run")
    assert isinstance(fits.loaders.train, DeviceLoader) and fits.data.num_classes == 2
    assert "dataset.loader=auto: the device loader, since its 0.00 GiB of decoded images fit" in caplog.text
    assert list((tmp_path / "data" / "cache" / "imagefolder").glob("*.pt"))
    large = trainer("run2", ["dataset.source.cache_budget_gb=1e-9"])
    assert isinstance(large.loaders.train, TorchLoader)
