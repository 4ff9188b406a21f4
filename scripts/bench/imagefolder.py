"""imagefolder (with --image-folder PATH): training img/s of the real Trainer on an image folder.

The per-sample DataLoader (dataset.loader=torch, the default before the decoded cache) against the cached uint8
tensors on the device loader (dataset.loader=auto, chosen when they fit the budget). Same model, batches,
augmentation and channels_last; the first epoch of each run is a warm-up (timed by the bench.runs.EpochTimer
callback); runs alternate, and each figure is the median over --if-repeats runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import median, say, table
from bench.runs import run_trainer


def run(args, device: torch.device) -> dict:
    say(f"\n== imagefolder: {args.image_folder}, {args.if_model}, {args.if_batches} batches of 128 per epoch ==")
    work = Path(tempfile.mkdtemp(prefix="cifarbench_bench_imagefolder_"))
    base = ["dataset=imagefolder", f"dataset.source.root={args.image_folder}", f"model={args.if_model}",
            f"trainer.epochs={args.if_epochs}", f"trainer.limit_train_batches={args.if_batches}",
            "trainer.limit_eval_batches=2", "trainer.batch_size=128", f"trainer.device={device}",
            "trainer.channels_last=true", "trainer.progress_bar=false", "trainer.resume=null"]
    paths = {"per-sample (dataset.loader=torch)": "torch", "cached, on device (dataset.loader=auto)": "auto"}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.if_repeats):
        for name, loader in paths.items():
            result = run_trainer(base + [f"dataset.loader={loader}"], args.if_model, device, work)
            timed = result["epoch_s"][1:] or result["epoch_s"]
            rates[name].append(result["images_per_epoch"] / median(timed))
            say(f"  {name}: {rates[name][-1]:.0f} img/s")
    figures = {name: median(values) for name, values in rates.items()}
    slow, fast = figures.values()
    say(table(["path", "train img/s (median)"], [[name, f"{value:.0f}"] for name, value in figures.items()]))
    say(f"cached device path / per-sample path: {fast / slow:.2f}x")
    return {"img_per_s": figures, "runs": rates, "ratio": fast / slow}
