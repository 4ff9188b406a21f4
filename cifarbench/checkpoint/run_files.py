"""What a run records about itself besides its weights: the identity stored in every checkpoint (what `evaluate`
needs to rebuild the model and its data) and the config files of its run directory."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cifarbench.fileio import write_text


def run_identity(cfg: DictConfig, model_name: str, data) -> dict:
    """`data`: the run's ImageSplits (classes, channels, normalisation)."""
    return {
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "model_name": model_name,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "classes": list(data.classes),
        "mean": list(data.mean),
        "std": list(data.std),
        "image_size": int(data.train.images.shape[-1]),  # what export and predict resize new images to
    }


def record_run_config(run_dir: Path, cfg: DictConfig, hydra_files: dict | None) -> None:
    """config.yaml and Hydra's .hydra/ files of a run, written once the config is accepted: a fresh run, or a resume
    that extends the run. A refused resume never reaches here, so a run's stored config is never replaced by another."""
    write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for name, text in (hydra_files or {}).items():
        write_text(Path(run_dir) / ".hydra" / name, text)
