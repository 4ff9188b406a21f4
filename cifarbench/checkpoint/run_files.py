"""What a run records about itself: the identity stored in every checkpoint (what `evaluate` needs to rebuild the
model) and the metrics.json payload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifarbench.fileio import write_text


def run_identity(trainer: Any) -> dict:
    data = trainer.data
    return {
        "config": OmegaConf.to_yaml(trainer.cfg, resolve=True),
        "model_name": trainer.model_name,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "classes": list(data.classes),
        "mean": list(data.mean),
        "std": list(data.std),
    }


def record_run_config(run_dir: Path, cfg: DictConfig, hydra_files: dict | None) -> None:
    """config.yaml and Hydra's .hydra/ files of a run, written once the config is accepted: a fresh run, or a resume
    that extends the run. A refused resume never reaches here, so a run's stored config is never replaced by another."""
    write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for name, text in (hydra_files or {}).items():
        write_text(Path(run_dir) / ".hydra" / name, text)


def metrics_payload(trainer: Any, *, status: str, session_time: float, test: dict | None = None,
                    error: str | None = None) -> dict:
    state, cfg, info = trainer.state, trainer.cfg, trainer.run_info
    payload = {
        "status": status,
        "error": error,
        "model": trainer.model_name,
        "dataset": cfg.dataset.name,
        "overrides": info.get("overrides", []),
        "choices": info.get("choices", {}),
        "params": trainer.params,
        "gflops": trainer.gflops,
        "epochs": state.epoch,
        "epochs_planned": cfg.trainer.epochs,
        "monitor": trainer.monitor,
        "best": state.best,
        "final": state.history[-1] if state.history else {},
        "swa": None,  # always in metrics.json, as before SWA became a callback (which fills it in)
        "test": {k: test[k] for k in ("loss", "acc", "top5")} if test else None,
        "per_class_acc": dict(zip(trainer.data.classes, test["per_class_acc"])) if test else None,
        "wall_time_s": trainer.wall_time_before + session_time,  # all sessions of the run
        "session_wall_time_s": session_time,
        "sessions": state.sessions,
        "img_per_s": state.train_samples / state.train_time if state.train_time else None,
        "skipped_steps": state.skipped_steps,
        "device": str(trainer.device),
        "precision": trainer.runtime.precision,  # what ran: trainer.precision=auto resolves per device
        "history": state.history,
    }
    for callback in trainer.callbacks.values():
        payload.update(callback.metrics())
    return payload
