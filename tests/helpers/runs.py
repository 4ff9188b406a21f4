"""In-process runs: a Trainer on a composed config, the toy model's Trainer, a signal sent from inside a step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from cifarbench import checkpoint
from cifarbench.engine.trainer import Trainer, TrainingInterrupted
from cifarbench.errors import CheckpointError, CifarbenchError, ConfigError
from tests.helpers.config import compose_config, toy_overrides


def train_in_process(overrides: list[str], run_dir: Path, info: dict | None = None) -> dict:
    """A Trainer run on a composed config, as `python -m cifarbench.train` does without the process start."""
    from cifarbench.engine.trainer import Trainer

    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir.parent)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Trainer(cfg, run_dir, info or {"overrides": overrides, "choices": {}}).fit()


def toy_trainer(toy_conf: Path, run_dir: Path, extra=(), batch_size: int = 16):
    from cifarbench.engine.trainer import Trainer

    return Trainer(compose_config(toy_overrides(toy_conf, batch_size) + list(extra)), run_dir, {})


def signal_after_step(monkeypatch, sig: int, epoch: int, step: int) -> None:
    """Send `sig` to this process right after micro-batch `step` (1-based) of epoch `epoch` (0-based)."""
    from cifarbench.engine.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if (self.state.epoch, self.state.step_in_epoch) == (epoch, step):
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


def stopped_then_resumed(toy_conf: Path, tmp_path: Path, monkeypatch, extra, rewrite=None, step: int = 5):
    """(straight run, run stopped by SIGTERM after micro-batch `step` of epoch 2 and resumed), both toy Trainers,
    with `rewrite(payload)` applied to last.pt in between."""
    import signal

    from cifarbench import checkpoint
    from cifarbench.engine.trainer import TrainingInterrupted

    straight = toy_trainer(toy_conf, tmp_path / "straight", extra)
    straight.fit()
    signal_after_step(monkeypatch, signal.SIGTERM, epoch=1, step=step)
    with pytest.raises(TrainingInterrupted):
        toy_trainer(toy_conf, tmp_path / "run", extra).fit()
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if rewrite is not None:
        checkpoint.save_checkpoint(last, rewrite(checkpoint.load_checkpoint(last)))
    resumed = toy_trainer(toy_conf, tmp_path / "run", extra)
    resumed.fit()
    return straight, resumed


# resnet20 on 96 synthetic images: 6 steps of 16 per epoch, single-threaded and deterministic.
SMALL = [
    "model=resnet20",
    "dataset=synthetic",
    "dataset.source.train_size=96",
    "dataset.source.test_size=32",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=32",
    "trainer.device=cpu",
    "trainer.deterministic=true",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
]


def reference_run(overrides: list[str], run_dir: Path) -> Path:
    """An uninterrupted run, in-process (the same code path as the CLI, without a process start)."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        result = train_in_process(overrides, run_dir)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    assert result["status"] == "completed"
    return run_dir


def stopped_in_epoch_2(monkeypatch, overrides: list[str], run_dir: Path, send, match: str) -> Path:
    """An in-process run that calls `send()` right after micro-batch 2 of epoch 2 and must stop there, with a
    mid-epoch last.pt at (1, 2)."""
    original_step = Trainer.train_step

    def step_then_send(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        if (self.state.epoch, self.state.step_in_epoch) == (1, 2):
            send()
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_send)
    with pytest.raises(TrainingInterrupted, match=match):
        reference_run(overrides, run_dir)
    monkeypatch.undo()
    saved = checkpoint.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["state"]["step_in_epoch"]) == (1, 2)
    return run_dir


# ============================================================================================ bad input
BASE = SMALL[:1] + SMALL[4:] + ["trainer.epochs=1"]  # no dataset chosen


TINY = BASE + ["dataset=synthetic", "dataset.source.train_size=40", "dataset.source.test_size=16"]


def build_error(overrides: list[str], tmp_path: Path, fit: bool = False, base: list[str] = TINY,
                kind: type[CifarbenchError] = ConfigError) -> str:
    """The message of the error (a config, data or checkpoint error, as `kind` says) a run stops with."""
    with pytest.raises(kind) as caught:
        trainer = Trainer(compose_config(base + overrides), tmp_path / "run", {"overrides": overrides, "choices": {}})
        if fit:
            trainer.fit()
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


def resume_error(resume: Path, overrides: list[str], tmp_path: Path) -> str:
    return build_error(overrides + [f"trainer.resume={resume}"], tmp_path, kind=CheckpointError)


# 256 toy images in batches of 16: 16 optimizer steps per epoch.
STEPS = 16
