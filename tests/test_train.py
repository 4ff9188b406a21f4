"""End-to-end runs of the trainer on tiny CIFAR-format data, read back through the files a user would open."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_config, tiny_cifar_overrides, toy_overrides, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarbench.checkpoint import load_checkpoint
from cifarbench.cli.evaluate import evaluate_checkpoint
from cifarbench.engine.trainer import Trainer

EPOCH_TAGS = {"train/loss", "train/acc", "test/loss", "test/acc", "lr", "time/epoch_s", "throughput/img_per_s"}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_one_epoch_run_writes_events_checkpoints_and_metrics(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root), run_dir)

    logged = scalars(run_dir)
    assert EPOCH_TAGS <= set(logged)
    # Every scalar's x axis is the optimizer step: 200 images in batches of 32 are 6 steps per epoch.
    assert all(steps == [6] for steps in ([s for s, _ in logged[tag]] for tag in EPOCH_TAGS))
    assert logged["epoch"] == [(6, 1.0)]
    assert logged["test/acc"][0][1] == pytest.approx(result["final"]["test/acc"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
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


def test_evaluate_reproduces_the_logged_test_accuracy(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root), run_dir)
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    assert evaluated["acc"] == result["test"]["acc"]
    assert evaluated["count"] == 60
    assert evaluated["loss"] == pytest.approx(result["test"]["loss"], rel=1e-6)
    assert len(evaluated["per_class_acc"]) == 10


def test_resume_continues_at_the_next_epoch_with_the_saved_optimizer_state(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    train_in_process(tiny_cifar_overrides(cifar_root), run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")

    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.epochs=2", "trainer.resume=auto"])
    trainer = Trainer(cfg, run_dir, {"overrides": [], "choices": {}})
    assert trainer.state.epoch == 1 and trainer.state.global_step == saved["state"]["global_step"]
    momentum = trainer.optimizer.state_dict()["state"]
    for key, state in saved["optimizer"]["state"].items():
        assert torch.equal(momentum[key]["momentum_buffer"], state["momentum_buffer"])
    assert trainer.scheduler.state_dict()["last_epoch"] == saved["scheduler"]["last_epoch"]
    result = trainer.fit()

    assert [h["epoch"] for h in result["history"]] == [1, 2]
    logged = scalars(run_dir)
    assert [step for step, _ in logged["train/loss"]] == [6, 12]


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, cifar_root, caplog):
    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.resume=auto"])
    with caplog.at_level("INFO", logger="cifarbench"):
        trainer = Trainer(cfg, tmp_path / "fresh", {})
    assert trainer.state.epoch == 0
    assert "starting a fresh run" in caplog.text


def test_validation_split_selects_on_val_and_tests_once(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    result = train_in_process(tiny_cifar_overrides(cifar_root) + ["dataset.val_size=50", "trainer.epochs=2"], run_dir)
    assert result["monitor"] == "val/acc"
    assert all("val/acc" in h and "test/acc" not in h for h in result["history"])
    logged = scalars(run_dir)
    assert "val/acc" in logged and "test/acc" not in logged
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["metrics"]["val/acc"] == max(h["val/acc"] for h in result["history"])
    assert result["test"]["acc"] == evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")["acc"]


def test_missing_dataset_offline_gives_one_clear_message(tmp_path):
    empty = tmp_path / "nothing-here"
    proc = subprocess.run(
        [sys.executable, "-m", "cifarbench.train", f"paths.data_dir={empty}", "dataset.source.download=false",
         f"hydra.run.dir={tmp_path / 'run'}", "trainer.device=cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("cifarbench: error:")]
    assert len(message) == 1
    assert str(empty / "cifar-10-batches-py") in message[0]
    assert "download" in message[0] and "cifar-10-batches-py' folder" in message[0]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def test_truncated_batch_file_gives_one_clear_message(tmp_path, cifar_root):
    batch = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    cfg = compose_config(tiny_cifar_overrides(cifar_root))
    from cifarbench.errors import DataError

    with pytest.raises(DataError, match="corrupt or truncated.*Delete .*cifar-10-batches-py"):
        Trainer(cfg, tmp_path / "run", {})


def test_train_size_smaller_than_a_batch_is_refused(tmp_path, cifar_root):
    from cifarbench.errors import ConfigError

    cfg = compose_config(tiny_cifar_overrides(cifar_root) + ["trainer.batch_size=1000"])
    with pytest.raises(ConfigError, match="trainer.batch_size=1000.*200 training images"):
        Trainer(cfg, tmp_path / "run", {})


def test_channels_last_bf16_train(tmp_path, cifar_root):
    result = train_in_process(
        tiny_cifar_overrides(cifar_root)
        + ["trainer.channels_last=true", "trainer.precision=bf16", "trainer.grad_clip_norm=1.0",
           "loss.label_smoothing=0.1", "trainer.deterministic=false"],
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


def test_cli_help_and_cfg_job():
    help_text = subprocess.run([sys.executable, "-m", "cifarbench.train", "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    assert "cifarbench.train" in help_text and "model: " in help_text and "wrn_28_10" in help_text
    job = subprocess.run([sys.executable, "-m", "cifarbench.train", "--cfg", "job", "model=wrn_28_10",
                          "dataset=cifar100"], capture_output=True, text=True, timeout=120)
    assert job.returncode == 0
    cfg = compose_config(["model=wrn_28_10", "dataset=cifar100"])
    assert "num_classes: ${dataset.num_classes}" in job.stdout
    assert cfg.model.num_classes == 100


def test_device_and_torch_loaders_both_train_and_log_the_same_metrics(tmp_path, cifar_root):
    runs = {}
    for loader in ("device", "torch"):
        runs[loader] = train_in_process(
            tiny_cifar_overrides(cifar_root) + [f"dataset.loader={loader}", "augment=[standard,cutout]"],
            tmp_path / loader,
        )
    assert set(scalars(tmp_path / "device")) == set(scalars(tmp_path / "torch"))
    assert set(runs["device"]["final"]) == set(runs["torch"]["final"])
    for result in runs.values():
        assert result["status"] == "completed" and result["final"]["train/loss"] > 0


def test_device_and_torch_loaders_serve_the_same_normalised_images(cifar_root):
    """Without augmentation the two data paths must agree on every value: the test batches in order, and the
    training epoch as a set of images (each path shuffles with its own generator)."""
    from cifarbench.data.loaders import build_loaders
    from cifarbench.engine.setup import build_data

    served = {}
    for loader in ("device", "torch"):
        cfg = compose_config(tiny_cifar_overrides(cifar_root) + [f"dataset.loader={loader}", "augment=none",
                                                                 "trainer.batch_size=40"])
        data = build_data(cfg.dataset, 0)
        loaders = build_loaders(cfg, data, torch.device("cpu"))
        train = torch.cat([images for images, _ in loaders.train])
        order = train.flatten(1).sum(dim=1).argsort()
        served[loader] = {
            "test": torch.cat([images for images, _ in loaders.test]),
            "test_labels": torch.cat([labels for _, labels in loaders.test]),
            "train": train[order],
        }
    assert served["device"]["train"].shape == (200, 3, 32, 32)
    for key in ("test", "test_labels", "train"):
        assert torch.allclose(served["device"][key].float(), served["torch"][key].float(), atol=1e-5), key
