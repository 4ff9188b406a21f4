"""The training loop (cifarbench.engine.trainer) on tiny data: files a run writes, clipping, precision, the order
of callbacks and optimizer steps, debug modes."""

from __future__ import annotations

import json

import pytest
import torch

from cifarbench.checkpoint import load_checkpoint
from cifarbench.engine.trainer import Trainer
from tests.helpers.config import compose_config, tiny_cifar_overrides, toy_overrides
from tests.helpers.events import scalars
from tests.helpers.runs import SMALL, reference_run, toy_trainer, train_in_process


def test_callbacks_see_optimizer_steps_not_micro_batches_and_ema_keeps_its_interval(tmp_path, toy_conf):
    """accumulate_steps=2: 8 micro-batches make 4 optimizer steps; the loop calls on_optimizer_step 4 times, and EMA
    with update_every=2 folds in the weights after steps 2 and 4 only."""
    from tests.helpers.runs import toy_trainer

    trainer = toy_trainer(toy_conf, tmp_path / "run", [
        "trainer.epochs=1", "dataset.source.train_size=128", "trainer.accumulate_steps=2", "+callbacks=ema",
        "callbacks.ema.update_every=2", "+callbacks.counter._target_=tests.helpers.toy_callbacks.StepCounter"])
    trainer.fit()
    assert trainer.state.global_step == 4 == trainer.callbacks["counter"].steps
    assert trainer.callbacks["ema"].ema.num_updates == 2


# ------------------------------------------------------------------------------------ debug
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


EPOCH_TAGS = {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "time/epoch_s", "throughput/img_per_s"}


def test_one_epoch_run_writes_events_checkpoints_and_metrics(tmp_path, cifar_root):
    """The dataset's default: 10% of the training images held out, best.pt selected on them, and the test set
    measured twice at the end (the selected and the final weights), each kept apart in metrics.json."""
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root, val_size="0.1"), run_dir)

    logged = scalars(run_dir)
    assert EPOCH_TAGS <= set(logged) and "test/acc" not in logged  # the test set is not looked at per epoch
    # Every scalar's x axis is the optimizer step: 180 training images in batches of 32 are 5 steps per epoch.
    assert all(steps == [5] for steps in ([s for s, _ in logged[tag]] for tag in EPOCH_TAGS))
    assert logged["epoch"] == [(5, 1.0)]
    assert logged["val/acc"][0][1] == pytest.approx(result["final"]["val/acc"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["monitor"] == "val/acc"
    assert metrics["selected"] == {"epoch": 1, "monitor": "val/acc", "on_test_set": False, "test_views": "none"}
    # One epoch: the selected checkpoint is the final one, so both tests measure the same weights.
    assert {k: metrics["test"][k] for k in ("loss", "acc", "top5")} == metrics["final_test"]
    assert metrics["test"]["images"] == 60 and metrics["test"]["partial"] is False  # the whole test set
    assert metrics["params"] == 269722  # resnet20 for 10 classes
    assert metrics["epochs"] == 1 and len(metrics["history"]) == 1
    assert metrics["img_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert 0.0 <= metrics["test"]["acc"] <= 1.0 and metrics["test"]["top5"] >= metrics["test"]["acc"]

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert best["kind"] == "best" and best["epoch"] == 1 and "optimizer" not in best
    assert last["kind"] == "last" and {"optimizer", "scheduler", "scaler", "ranks"} <= set(last)
    assert {"rng", "loader"} <= set(last["ranks"][0]) and last["world_size"] == 1
    assert best["model_name"] == "resnet20" and "depth: 20" in best["config"] and best["num_classes"] == 10


def test_the_loaders_worker_processes_end_with_the_run(tmp_path, cifar_root):
    """dataset.persistent_workers keeps the DataLoader's workers from one epoch to the next, and a Hydra multirun's
    jobs share one process: each run's workers must end with its fit(), not whenever garbage collection reaches
    its trainer (workers of every finished job piled up, and were killed mid-shutdown at the interpreter's exit)."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    trainer = Trainer(compose_config(tiny_cifar_overrides(cifar_root) + [
        "dataset.loader=torch", "dataset.num_workers=1", "dataset.persistent_workers=true", "trainer.epochs=2"]),
        tmp_path / "run", {})
    workers_at_epoch_end, train_epoch = [], trainer.train_epoch

    def watched_epoch():
        record = train_epoch()
        workers_at_epoch_end.append(len(set(multiprocessing.active_children()) - before))
        return record

    trainer.train_epoch = watched_epoch
    assert trainer.fit()["status"] == "completed"
    assert workers_at_epoch_end == [1, 1]  # one worker, kept between the epochs
    assert set(multiprocessing.active_children()) <= before, "the run's DataLoader workers outlived fit()"


def test_channels_last_bf16_train(tmp_path, cifar_root):
    result = train_in_process(
        tiny_cifar_overrides(cifar_root)
        + ["trainer.channels_last=true", "trainer.precision=bf16", "trainer.grad_clip_norm=1.0",
           "loss.label_smoothing=0.1", "trainer.deterministic=false",
           "trainer.limit_train_batches=3"],  # bf16 is emulated on CPUs without it: a few steps show it works
        tmp_path / "run",
    )
    assert result["status"] == "completed"
    assert torch.isfinite(torch.tensor(result["final"]["train/loss"]))
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.parametrize("clip", [0.01, None])
def test_gradient_clipping_bounds_the_step(clip, tmp_path, toy_conf):
    """Plain SGD at lr 1: one step moves the weights by exactly the (clipped) gradient norm."""
    overrides = toy_overrides(toy_conf, 16) + [
        "optimizer.momentum=0", "optimizer.nesterov=false", "optimizer.weight_decay=0", "optimizer.lr=1.0",
        f"trainer.grad_clip_norm={'null' if clip is None else clip}",
    ]
    trainer = Trainer(compose_config(overrides), tmp_path / "run", {})
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    images, labels = next(iter(trainer.loaders.train))
    trainer.state.step_in_epoch = 1
    trainer.train_step(images, labels, len(trainer.loaders.train))
    moved = float((torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - before).norm())
    if clip is None:
        assert moved > 0.1, "the unclipped gradient of this batch is far larger than the clip norm below"
    else:
        assert moved == pytest.approx(clip, rel=1e-3)


def test_a_partial_evaluation_is_labelled_partial_and_short_epochs_still_get_step_curves(tmp_path, caplog):
    """trainer.limit_eval_batches=1 on a 64-image test set: the test figure is on 32 images and says so (log line,
    metrics.json, the epoch record); epochs of 6 steps, shorter than log_every_n_steps=50, still get one step-curve
    point each, at their last step."""
    caplog.set_level("INFO", logger="cifarbench")
    run_dir = reference_run(SMALL + ["trainer.epochs=2", "trainer.limit_eval_batches=1",
                                     "dataset.source.test_size=64"], tmp_path / "run")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["images"] == 32 and metrics["test"]["partial"] is True
    assert metrics["history"][-1]["test/images"] == 32
    lines = [r.getMessage() for r in caplog.records]
    # One spelling wherever the figure appears: each epoch's line, the selected model's test and the run's summary.
    note = "(PARTIAL: 32 of 64 test images, trainer.limit_eval_batches=1)"
    assert [line.split()[1] for line in lines if line.startswith("epoch ") and note in line] == ["1/2", "2/2"], lines
    assert any(line.startswith("test, selected model") and note in line for line in lines), lines
    assert any(line.startswith("test: acc") and note in line for line in lines), lines
    assert [step for step, _ in scalars(run_dir)["train/loss_step"]] == [6, 12]


def test_the_debug_configs_are_quick_and_log_every_step():
    fast = compose_config(["debug=fast", "model=wrn_28_10"])
    assert (fast.trainer.batch_size, fast.trainer.eval_batch_size, fast.trainer.log_every_n_steps) == (32, 32, 1)
    limit = compose_config(["debug=limit"])
    assert (limit.trainer.eval_batch_size, limit.trainer.log_every_n_steps) == (100, 1)
