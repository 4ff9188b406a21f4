"""Checkpoints and what a run keeps on disk: safe reading and atomic writing (io), last.pt and best.pt from a
registry of stateful parts (checkpointer), what a resume may change (resume), the identity and config files of a run
(run_files), and every allowance for files written by an older cifarbench (compat)."""

from cifarbench.checkpoint.io import (
    load_checkpoint,
    load_model_weights,
    model_from_checkpoint,
    save_checkpoint,
    stored_config,
)

__all__ = ["load_checkpoint", "load_model_weights", "model_from_checkpoint", "save_checkpoint", "stored_config"]
