#!/usr/bin/env python
"""Benchmarks of issue 5: data throughput, framework overhead and training-step options, side by side in one run.

Sections (pick with --only data,overhead,options):

data      The seed articles' per-sample pipeline -- torchvision `T.Compose` on PIL images from a CIFAR-shaped uint8
          array (as torchvision.datasets.CIFAR10 hands them out), in a torch DataLoader with 2 worker processes,
          batch 128, persistent workers -- against cifarbench's DeviceLoader (the whole split on the device, augmented
          in batches) with the same ops, on the chosen device. Configurations:
            (a) RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize + Cutout(16)
            (b) the same with AutoAugment(CIFAR10) after the flip.
          Random uint8 images, so nothing is downloaded. The two loaders are timed in alternating windows of
          --data-images images and each figure is the median over --data-rounds windows. Every per-sample window
          gets its own DataLoader: worker start-up and the batches its workers prefetched are skipped untimed, and
          the workers are stopped before the device path is timed (idle persistent workers would keep prefetching
          and steal its CPU). On CUDA the per-sample batches are copied to the device (pinned memory,
          non_blocking) inside the timed window, as training would need them there.
overhead  Training img/s through the real Trainer (progress bars as configured, TensorBoard, a checkpoint every
          epoch, metrics.json, per-epoch evaluation, a log file) against a bare hand-written loop with the same
          model, batch size, DeviceLoader batches (same augmentation), SGD-nesterov optimizer, per-step cosine
          scheduler and device. Both are timed the same way: wall time around each epoch's training pass (the
          Trainer's `train_epoch`, wrapped from outside; the bare loop's epoch), synchronised; the first epoch is a
          warm-up and is excluded. The one-off work between epochs (evaluation, checkpoint, TensorBoard, metrics.json)
          is NOT in that figure; a second figure, wall time around `fit()` (Trainer construction excluded) over all
          epochs, includes it and is reported beside it. Runs alternate trainer, bare, trainer, bare, ... and each
          figure is the median over --overhead-repeats runs.
imagefolder  (with --image-folder PATH) Training img/s of the real Trainer on an image folder: the per-sample
          DataLoader (dataset.loader=torch) against the decoded uint8 cache on the device loader
          (dataset.loader=auto), alternating runs, median over --if-repeats.
options   Training-step img/s for a small and a large model: fp32 contiguous eager (baseline) against channels_last,
          bf16 autocast, torch.compile, each alone and all together, on one fixed random batch. The first
          --options-warmup steps of each variant (torch.compile's compilation included) are not timed; the variants
          are then timed round-robin, --options-steps steps per round, median over --options-rounds rounds.

Timers wait for the device (cifarbench.device.synchronize) before they start and stop, so CUDA figures are honest.
Backend flags are set once as the trainer sets them (cifarbench.device.configure_backends: cudnn.benchmark and TF32
on CUDA, nothing on the CPU). The header reports the device and torch.get_num_threads(). On a CPU shared with other
jobs, torch's intra-op threads stall each other and every figure drops (often several-fold): measure on an idle
machine. --threads 1 makes the figures steadier there; the device path then has one core while the per-sample
path keeps its worker processes, so the data ratio it gives is conservative.

Examples:
    python scripts/benchmark.py                                   # everything, ~10 min on an idle 2-core CPU
    python scripts/benchmark.py --only data --device cuda --json bench.json
    python scripts/benchmark.py --quick --device cpu              # tiny sizes: checks that it runs, not speed
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from cifarbench.data.augment import AutoAugment, Cutout, HorizontalFlip, RandomCrop  # noqa: E402
from cifarbench.data.device_loader import DeviceLoader  # noqa: E402
from cifarbench.data.splits import ImageTensors  # noqa: E402
from cifarbench.device import (  # noqa: E402
    autocast,
    configure_backends,
    native_bf16,
    resolve_device,
    resolve_precision,
    synchronize,
)

SECTIONS = ("data", "overhead", "options", "imagefolder", "airbench", "allocator")
DEFAULT_SECTIONS = ("data", "overhead", "options")  # imagefolder needs --image-folder
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATA_GOALS = {"a": 10.0, "b": 5.0}  # issue 5: device / per-sample on the 2-core machine
OVERHEAD_GOAL = 0.95  # issue 5: trainer / bare for resnet20 on the CPU

OPTION_VARIANTS = {
    "baseline": dict(channels_last=False, bf16=False, compile=False),
    "channels_last": dict(channels_last=True, bf16=False, compile=False),
    "bf16": dict(channels_last=False, bf16=True, compile=False),
    "compile": dict(channels_last=False, bf16=False, compile=True),
    "all": dict(channels_last=True, bf16=True, compile=True),
}

# Sizes of the full run (sized for ~10 minutes on an idle 2-core CPU) and of --quick (a smoke test).
PROFILES = {
    "full": dict(
        num_images=50_000,
        data_images=10_240,
        data_rounds=3,
        workers=2,
        data_batch_size=128,
        loader_batch_sizes="128,512,2048",
        overhead_model="resnet20",
        overhead_train_size=4096,
        overhead_test_size=512,
        overhead_batch_size=128,
        overhead_epochs=3,
        overhead_repeats=3,
        options_models="resnet20,resnet18",
        options_variants=",".join(OPTION_VARIANTS),
        options_batch_size=128,
        options_warmup=2,
        options_steps=2,
        options_rounds=3,
        if_batches=100,
        if_epochs=2,
        if_repeats=2,
        ab_train_size=10240,
        ab_test_size=2000,
        ab_batch_size=None,
        ab_epochs=3,
        ab_repeats=2,
        ab_warmup=1,
        alloc_steps=4,
        alloc_rounds=2,
    ),
    "quick": dict(
        num_images=512,
        data_images=256,
        data_rounds=1,
        workers=2,
        data_batch_size=64,
        loader_batch_sizes="64,128",
        overhead_model="resnet20",
        overhead_train_size=256,
        overhead_test_size=64,
        overhead_batch_size=64,
        overhead_epochs=2,
        overhead_repeats=1,
        # torch.compile takes minutes on a busy 2-core machine: the quick run leaves it out.
        options_models="resnet20,resnet32",
        options_variants="baseline,channels_last,bf16",
        options_batch_size=8,
        options_warmup=1,
        options_steps=1,
        options_rounds=1,
        if_batches=2,
        if_epochs=2,
        if_repeats=1,
        ab_train_size=512,
        ab_test_size=128,
        ab_batch_size=128,
        ab_epochs=2,
        ab_repeats=1,
        ab_warmup=0,
        alloc_steps=1,
        alloc_rounds=1,
    ),
}


# ---------------------------------------------------------------------------------------------------- output
def table(headers: list[str], rows: list[list], left: tuple[int, ...] = (0,)) -> str:
    """A plain-text table: columns in `left` are left-aligned, the others right-aligned; floats get few digits."""

    def fmt(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    numeric = [i not in left for i in range(len(headers))]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = [
        "  ".join(h.rjust(w) if num else h.ljust(w) for h, w, num in zip(headers, widths, numeric)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for row in cells:
        out.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{rev}{' (+ uncommitted changes)' if dirty else ''}" if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: torch.device, args) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        # Which vector units torch's CPU kernels use (AVX2, AVX512, ...) and whether bf16 is native: CPU figures,
        # bf16 ones above all, mean little without them.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": native_bf16(torch.device("cpu"))[1],
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_revision(),
        "profile": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


# ------------------------------------------------------------------------------------------------------ data
class SeedCIFAR(Dataset):
    """Like torchvision.datasets.CIFAR10: HWC uint8 numpy rows, a PIL image per item, then the transform."""

    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor, transform: Callable):
        self.data = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3), as CIFAR10.data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index]


class SeedCutout:
    """Cutout as in DeVries & Taylor's code (and the seed articles): a numpy mask on the normalised tensor."""

    def __init__(self, n_holes: int = 1, length: int = 16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[1:]
        mask = np.ones((height, width), np.float32)
        for _ in range(self.n_holes):
            y, x = np.random.randint(height), np.random.randint(width)
            y1, y2 = np.clip(y - self.length // 2, 0, height), np.clip(y + self.length // 2, 0, height)
            x1, x2 = np.clip(x - self.length // 2, 0, width), np.clip(x + self.length // 2, 0, width)
            mask[y1:y2, x1:x2] = 0.0
        return image * torch.from_numpy(mask).expand_as(image)


def seed_transform(autoaugment: bool, padding_mode: str) -> T.Compose:
    return T.Compose(
        [
            T.RandomCrop(32, padding=4, padding_mode=padding_mode),
            T.RandomHorizontalFlip(),
            *([T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)] if autoaugment else []),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            SeedCutout(n_holes=1, length=16),
        ]
    )


def cifarbench_ops(autoaugment: bool, padding_mode: str) -> list:
    """The same pipeline as cifarbench ops (conf/augment/standard.yaml [+ autoaugment.yaml] + cutout.yaml)."""
    return [
        RandomCrop(None, padding=4, padding_mode=padding_mode),
        HorizontalFlip(0.5),
        *([AutoAugment("cifar10")] if autoaugment else []),
        Cutout(n_holes=1, length=16),
    ]


def endless(loader) -> Iterator:
    while True:
        yield from loader


def timed_window(batches: Iterator, device: torch.device, warmup_images: int, images: int) -> float:
    """img/s over at least `images` images, after `warmup_images` untimed ones; batches end up on `device`."""
    seen = 0
    while seen < warmup_images:
        x, y = next(batches)
        x.to(device, non_blocking=True)
        seen += len(y)
    synchronize(device)
    started = time.perf_counter()
    seen = 0
    while seen < images:
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        seen += len(y)
    synchronize(device)
    return seen / (time.perf_counter() - started)


def per_sample_window(dataset: Dataset, args, device: torch.device, images: int) -> float:
    """One timed window of the seed-style DataLoader, with workers started for it and stopped after it.

    Persistent workers would keep prefetching while the device path is timed next and steal its CPU, so each
    window gets its own DataLoader: worker start-up and the first prefetched batches are in the untimed
    warm-up, and the workers are shut down (joined) before the function returns.
    """
    bs, workers = args.data_batch_size, args.workers
    loader = DataLoader(
        dataset,
        batch_size=bs,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    batches = endless(loader)
    prefetch = 2  # DataLoader's default prefetch_factor
    try:
        return timed_window(batches, device, (workers * prefetch + 2) * bs, images)
    finally:
        batches.close()
        iterator = getattr(loader, "_iterator", None)  # the persistent workers' iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        del loader, batches, iterator
        gc.collect()


def count_host_syncs(batches: Iterator, device: torch.device) -> int | None:
    """Host-device synchronisations while one batch is made (CUDA only), via torch's sync debug mode.

    Each one stalls the CPU until the GPU has drained its queue, so the next batch's augmentation cannot be
    queued behind the running training step.
    """
    if device.type != "cuda":
        return None
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                next(batches)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    except Exception:  # a diagnostic only: never let it break the benchmark
        return None


def bench_data(args, device: torch.device) -> dict:
    bs, workers = args.data_batch_size, args.workers
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.num_images,), generator=generator)
    measured = args.data_images
    configs = [("a", "crop + flip + Cutout", False), ("b", "crop + flip + AutoAugment + Cutout", True)]
    say(
        f"\n== data throughput: {args.num_images} random uint8 32x32 images, batch {bs}, "
        f"{args.padding_mode} padding; per-sample and device timed in alternating windows of {measured} images, "
        f"median of {args.data_rounds} =="
    )
    say(
        f"per-sample: torchvision T.Compose on PIL images (torchvision.datasets.CIFAR10-style dataset), DataLoader "
        f"num_workers={workers}, persistent_workers, pin_memory={device.type == 'cuda'}; each window starts its "
        f"workers, skips {workers * 2 + 2} batches untimed, and stops them after it"
    )
    say(f"device:     cifarbench DeviceLoader on {device} with the same ops (crop, flip, [AutoAugment], Cutout)")
    results = []
    for key, label, autoaugment in configs:
        dataset = SeedCIFAR(images, labels, seed_transform(autoaugment, args.padding_mode))
        device_loader = DeviceLoader(
            ImageTensors(images, labels),
            bs,
            device=device,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            ops=cifarbench_ops(autoaugment, args.padding_mode),
            shuffle=True,
            drop_last=True,
            seed=0,
        )
        device_batches = endless(device_loader)
        timed_window(device_batches, device, 4 * bs, bs)  # first use: caches, allocator; not timed
        syncs = count_host_syncs(device_batches, device)
        per_sample, on_device = [], []
        for _ in range(args.data_rounds):
            per_sample.append(per_sample_window(dataset, args, device, measured))
            on_device.append(timed_window(device_batches, device, bs, measured))
        device_batches.close()
        del device_batches, device_loader
        gc.collect()
        row = {
            "config": key,
            "pipeline": label,
            "per_sample_img_s": median(per_sample),
            "device_img_s": median(on_device),
            "per_sample_windows": per_sample,
            "device_windows": on_device,
            "goal_ratio": DATA_GOALS[key],
            "device_host_syncs_per_batch": syncs,
        }
        row["ratio"] = row["device_img_s"] / row["per_sample_img_s"]
        row["meets_goal"] = row["ratio"] >= row["goal_ratio"]
        results.append(row)
        say(f"  ({key}) per-sample {_fmt_rates(per_sample)} img/s, device {_fmt_rates(on_device)} img/s")
    say()
    say(
        table(
            [
                "config",
                "pipeline",
                "per-sample img/s",
                f"device ({device.type}) img/s",
                "device/per-sample",
                "goal",
                "met",
            ],
            [
                [
                    f"({r['config']})",
                    r["pipeline"],
                    r["per_sample_img_s"],
                    r["device_img_s"],
                    f"{r['ratio']:.1f}x",
                    f">={r['goal_ratio']:.0f}x",
                    "yes" if r["meets_goal"] else "NO",
                ]
                for r in results
            ],
            left=(0, 1),
        )
    )
    if device.type == "cuda":
        say(
            "host-device syncs while the DeviceLoader makes one batch: "
            + ", ".join(f"({r['config']}) {r['device_host_syncs_per_batch']}" for r in results)
        )
    loader = loader_batch_sweep(images, labels, device, args)
    return {
        "loader_by_batch": loader,
        "num_images": args.num_images,
        "batch_size": bs,
        "workers": workers,
        "padding_mode": args.padding_mode,
        "window_images": measured,
        "rounds": args.data_rounds,
        "configs": results,
    }


LOADER_GOAL_IMG_S = 1_000_000  # the project's goal for crop+flip+Cutout on one GPU


def loader_batch_sweep(images: torch.Tensor, labels: torch.Tensor, device: torch.device, args) -> dict:
    """The DeviceLoader alone (crop + flip + Cutout, no training) at each of --loader-batch-sizes: small batches are
    bound by the host launching the batch's ~55 kernels, large ones by the device. The best figure is judged
    against the 1M img/s goal."""
    sizes = [int(b) for b in str(args.loader_batch_sizes).split(",") if b.strip()]
    rates = {}
    for batch in sizes:
        if batch > len(labels):
            continue
        loader = DeviceLoader(ImageTensors(images, labels), batch, device=device, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                              ops=cifarbench_ops(False, args.padding_mode), shuffle=True, drop_last=True, seed=0)
        batches = endless(loader)
        window = max(args.data_images, 4 * batch)
        timed_window(batches, device, 4 * batch, batch)  # first use: caches, allocator; not timed
        rates[batch] = median([timed_window(batches, device, 0, window) for _ in range(args.data_rounds)])
        batches.close()
    result = loader_verdict(rates)
    say(f"DeviceLoader alone, crop + flip + Cutout on {device}: "
        + ", ".join(f"batch {b}: {r:,.0f} img/s" for b, r in rates.items())
        + f"; best {result['best_img_s']:,.0f} img/s at batch {result['best_batch']} against the goal of "
          f"{LOADER_GOAL_IMG_S:,} ({'met' if result['meets_goal'] else 'not met'})")
    return result


def loader_verdict(rates: dict[int, float]) -> dict:
    best = max(rates, key=rates.get)
    return {"img_s": rates, "best_batch": best, "best_img_s": rates[best], "goal_img_s": LOADER_GOAL_IMG_S,
            "meets_goal": rates[best] >= LOADER_GOAL_IMG_S}


def _fmt_rates(rates: list[float]) -> str:
    return "[" + ", ".join(f"{r:,.0f}" for r in rates) + "]"


# -------------------------------------------------------------------------------------------------- overhead
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cifarbench.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def overhead_overrides(args, device: torch.device) -> list[str]:
    return [
        "dataset=synthetic",
        f"dataset.source.train_size={args.overhead_train_size}",
        f"dataset.source.test_size={args.overhead_test_size}",
        f"model={args.overhead_model}",
        f"trainer.batch_size={args.overhead_batch_size}",
        f"trainer.epochs={args.overhead_epochs}",
        f"trainer.device={device}",
        "trainer.progress_bar=true",
        "trainer.checkpoint_every_n_epochs=1",
    ]


def _timed(fn: Callable, device: torch.device, times: list[float]) -> Callable:
    def wrapper(*a, **kw):
        synchronize(device)
        started = time.perf_counter()
        out = fn(*a, **kw)
        synchronize(device)
        times.append(time.perf_counter() - started)
        return out

    return wrapper


def run_trainer(overrides: list[str], model_name: str, device: torch.device, work_dir: Path) -> dict:
    from omegaconf import OmegaConf, open_dict

    from cifarbench.engine.trainer import Trainer

    cfg = compose(overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="trainer_", dir=work_dir))
    with open_dict(cfg):
        cfg.paths.output_dir = str(work_dir)
        cfg.paths.data_dir = str(work_dir / "data")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # The log file Hydra's job logging would write, so the trainer's log calls cost what they do in a real run.
    logger = logging.getLogger("cifarbench")
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        choices = {"model": model_name, "dataset": "synthetic"}
        trainer = Trainer(cfg, run_dir, {"overrides": overrides, "choices": choices})
        epoch_times: list[float] = []
        trainer.train_epoch = _timed(trainer.train_epoch, device, epoch_times)  # fit() looks it up on the instance
        synchronize(device)
        started = time.perf_counter()
        result = trainer.fit()
        synchronize(device)
        fit_wall = time.perf_counter() - started
        images_per_epoch = trainer.state.train_samples // max(trainer.state.epoch, 1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()
    return {
        "epoch_s": epoch_times,
        "images_per_epoch": images_per_epoch,
        "fit_wall_s": fit_wall,
        "trainer_epoch_s": [h["time/epoch_s"] for h in result["history"]],
        # fit() minus the training passes: per-epoch eval, checkpoints, TensorBoard/metrics.json, final test.
        "outside_training_s": fit_wall - sum(epoch_times),
        "bars_shown": trainer.log.show_bars,
    }


def run_bare(overrides: list[str], device: torch.device) -> dict:
    """The loop a user would write by hand: same data, model, optimizer and schedule; nothing else."""
    from cifarbench.config import build
    from cifarbench.data.loaders import build_loaders
    from cifarbench.device import memory_format
    from cifarbench.engine.setup import build_data

    cfg = compose(overrides)
    t = cfg.trainer
    torch.manual_seed(int(t.seed))
    data = build_data(cfg.dataset, int(t.seed))
    loader = build_loaders(cfg, data, device).train  # the same DeviceLoader (augmentation, shuffling) as the trainer
    model = build(cfg.model).to(device, memory_format=memory_format(t.channels_last))
    optimizer = build(cfg.optimizer)(model.parameters())
    scheduler = build(cfg.scheduler)(optimizer, steps_per_epoch=len(loader), epochs=int(t.epochs))
    model.train()
    epoch_times: list[float] = []
    seen = 0

    def epoch(number: int) -> int:
        loader.set_epoch(number)
        count = 0
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            count += len(labels)
        return count

    timed_epoch = _timed(epoch, device, epoch_times)
    for number in range(1, int(t.epochs) + 1):
        seen += timed_epoch(number)
    return {"epoch_s": epoch_times, "images_per_epoch": seen // int(t.epochs)}


def bench_overhead(args, device: torch.device) -> dict:
    if args.overhead_epochs < 2:
        raise SystemExit("benchmark: --overhead-epochs must be >= 2 (the first epoch is a warm-up)")
    overrides = overhead_overrides(args, device)
    say(
        f"\n== framework overhead: {args.overhead_model}, synthetic {args.overhead_train_size} train / "
        f"{args.overhead_test_size} test images, batch {args.overhead_batch_size}, {args.overhead_epochs} epochs, "
        f"{args.overhead_repeats} x (trainer, bare) alternating =="
    )
    say(
        "trainer: cifarbench Trainer(...).fit() with the default trainer config (progress bars, TensorBoard, "
        "checkpoint every epoch, metrics.json, per-epoch eval, log file)"
    )
    say("bare:    hand-written loop, same DeviceLoader batches, model, SGD nesterov, per-step cosine scheduler")
    say(
        "steady img/s: train images of epochs 2..N / wall time of those epochs' training passes (synchronised); "
        "epoch 1 (warm-up) and the between-epoch eval/checkpoint/logging are excluded"
    )
    say(
        "fit img/s: all train images / wall time of fit() (construction excluded) -- includes per-epoch eval, "
        "checkpoints, TensorBoard, metrics.json and the final test, which the bare loop does not do"
    )
    if not sys.stderr.isatty():
        say("note: stderr is not a terminal, so the trainer hides its progress bars (RunLog shows them on a TTY only)")
    trainer_runs, bare_runs = [], []
    with tempfile.TemporaryDirectory(prefix="cifarbench_bench_") as tmp:
        for repeat in range(args.overhead_repeats):
            trainer_runs.append(run_trainer(overrides, args.overhead_model, device, Path(tmp)))
            bare_runs.append(run_bare(overrides, device))
            say(
                f"  repeat {repeat + 1}: trainer epochs {_fmt_times(trainer_runs[-1]['epoch_s'])}, "
                f"bare epochs {_fmt_times(bare_runs[-1]['epoch_s'])}"
            )

    def steady(run: dict) -> float:
        return run["images_per_epoch"] * (len(run["epoch_s"]) - 1) / sum(run["epoch_s"][1:])

    trainer_steady = [steady(r) for r in trainer_runs]
    bare_steady = [steady(r) for r in bare_runs]
    trainer_internal = [
        r["images_per_epoch"] * (len(r["trainer_epoch_s"]) - 1) / sum(r["trainer_epoch_s"][1:]) for r in trainer_runs
    ]
    trainer_fit = [r["images_per_epoch"] * len(r["epoch_s"]) / r["fit_wall_s"] for r in trainer_runs]
    bare_all = [r["images_per_epoch"] * len(r["epoch_s"]) / sum(r["epoch_s"]) for r in bare_runs]
    result = {
        "model": args.overhead_model,
        "train_images": args.overhead_train_size,
        "test_images": args.overhead_test_size,
        "batch_size": args.overhead_batch_size,
        "epochs": args.overhead_epochs,
        "repeats": args.overhead_repeats,
        "images_per_epoch": trainer_runs[0]["images_per_epoch"],
        "bare_images_per_epoch": bare_runs[0]["images_per_epoch"],
        "progress_bars_shown": trainer_runs[0]["bars_shown"],
        "measure": "steady: wall time of the training passes of epochs 2..N (eval/checkpoint excluded); "
        "fit: wall time of fit() over all epochs (eval, checkpoints, final test included)",
        "trainer_img_s": median(trainer_steady),
        "bare_img_s": median(bare_steady),
        "trainer_internal_img_s": median(trainer_internal),
        "trainer_fit_img_s": median(trainer_fit),
        "bare_all_epochs_img_s": median(bare_all),
        "per_repeat_ratio": [a / b for a, b in zip(trainer_steady, bare_steady)],
        "trainer_outside_training_s": median([r["outside_training_s"] for r in trainer_runs]),
        "goal_ratio": OVERHEAD_GOAL,
        "runs": {"trainer": trainer_runs, "bare": bare_runs},
    }
    result["ratio"] = result["trainer_img_s"] / result["bare_img_s"]
    result["fit_ratio"] = result["trainer_fit_img_s"] / result["bare_all_epochs_img_s"]
    result["meets_goal"] = result["ratio"] >= OVERHEAD_GOAL
    if result["images_per_epoch"] != result["bare_images_per_epoch"]:
        say("WARNING: the trainer and the bare loop saw different numbers of images per epoch")
    say()
    say(
        table(
            ["measure", "trainer img/s", "bare img/s", "trainer/bare", "goal"],
            [
                [
                    "steady (epochs 2..N, training passes only)",
                    result["trainer_img_s"],
                    result["bare_img_s"],
                    f"{result['ratio']:.3f}",
                    f">={OVERHEAD_GOAL} {'met' if result['meets_goal'] else 'NOT met'}",
                ],
                [
                    "fit() wall, all epochs (trainer also evals/ckpts)",
                    result["trainer_fit_img_s"],
                    result["bare_all_epochs_img_s"],
                    f"{result['fit_ratio']:.3f}",
                    "-",
                ],
            ],
            left=(0, 4),
        )
    )
    say(
        f"(the trainer's own time/epoch_s gives {result['trainer_internal_img_s']:,.0f} img/s for epochs 2..N; "
        f"per-repeat steady ratios: {', '.join(f'{r:.3f}' for r in result['per_repeat_ratio'])}; "
        f"fit() spent {result['trainer_outside_training_s']:.1f} s per run outside the training passes: "
        f"eval, checkpoints, logging, final test)"
    )
    return result


def _fmt_times(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.2f}s" for t in times) + "]"


# --------------------------------------------------------------------------------------------------- options


class StepVariant:
    """One model + optimizer + fixed batch, set up for one combination of options; `step()` is a training step."""

    def __init__(self, model_name: str, options: dict, batch_size: int, device: torch.device):
        from cifarbench.config import build

        cfg = compose(["dataset=synthetic", f"model={model_name}"])
        torch.manual_seed(0)
        fmt = torch.channels_last if options["channels_last"] else torch.contiguous_format
        self.device = device
        self.model = build(cfg.model).to(device, memory_format=fmt).train()
        self.forward = torch.compile(self.model) if options["compile"] else self.model
        self.optimizer = build(cfg.optimizer)(self.model.parameters())
        self.precision = "bf16" if options["bf16"] else "32"
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device, memory_format=fmt)
        self.labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)

    def step(self) -> None:
        with autocast(self.device, self.precision):  # as Trainer.train_step
            logits = self.forward(self.images)
            loss = F.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - started


def bench_options(args, device: torch.device) -> dict:
    models = [m for m in args.options_models.split(",") if m]
    names = ["baseline", *(v for v in args.options_variants.split(",") if v and v != "baseline")]
    unknown = sorted(set(names) - set(OPTION_VARIANTS))
    if unknown:
        raise SystemExit(f"benchmark: --options-variants: unknown {unknown}; choose from {', '.join(OPTION_VARIANTS)}")
    bs = args.options_batch_size
    say(
        f"\n== training-step options: batch {bs}, SGD nesterov step on one fixed random batch, "
        f"{args.options_warmup} untimed warm-up steps per variant (torch.compile's compilation included), "
        f"then {args.options_rounds} round-robin rounds of {args.options_steps} steps (median) =="
    )
    results = []
    for model_name in models:
        variants, rows = {}, {}
        for name in names:
            options = OPTION_VARIANTS[name]
            row = {"model": model_name, "variant": name, **options, "img_s": None, "ratio": None, "error": None}
            rows[name] = row
            try:
                variant = StepVariant(model_name, options, bs, device)
                row["warmup_s"] = variant.run(args.options_warmup)
                variants[name] = variant
            except Exception as error:  # e.g. no C++ compiler for torch.compile, bf16 not supported here
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                say(f"  {model_name} {name}: failed ({row['error']})")
        timings = {name: [] for name in variants}
        for _ in range(args.options_rounds):
            for name, variant in variants.items():
                timings[name].append(bs * args.options_steps / variant.run(args.options_steps))
        for name, values in timings.items():
            rows[name]["img_s"] = median(values)
            rows[name]["rounds_img_s"] = values
        base = rows["baseline"]["img_s"]
        for row in rows.values():
            if row["img_s"] is not None and base:
                row["ratio"] = row["img_s"] / base
        results.extend(rows.values())
        say(
            f"  {model_name}: "
            + ", ".join(f"{n} {r['img_s']:,.0f}" if r["img_s"] else f"{n} failed" for n, r in rows.items())
            + " img/s"
        )
        del variants
        gc.collect()
        torch._dynamo.reset()
    say()
    say(
        table(
            ["model", "variant", "channels_last", "bf16", "compile", "img/s", "vs baseline", "warm-up s"],
            [
                [
                    r["model"],
                    r["variant"],
                    _yes(r["channels_last"]),
                    _yes(r["bf16"]),
                    _yes(r["compile"]),
                    r["img_s"] if r["img_s"] is not None else f"failed: {r['error']}"[:60],
                    f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                    r.get("warmup_s"),
                ]
                for r in results
            ],
            left=(0, 1),
        )
    )
    if device.type == "cpu":
        say(f"(bf16 on this CPU: {native_bf16(device)[1]})")
    return {
        "batch_size": bs,
        "warmup_steps": args.options_warmup,
        "steps": args.options_steps,
        "rounds": args.options_rounds,
        "compile_warmup": "excluded from img/s",
        "results": results,
    }


def bench_imagefolder(args, device: torch.device) -> dict:
    """Training img/s of the real Trainer on an image folder: the per-sample DataLoader (dataset.loader=torch, the
    default before the decoded cache) against the cached uint8 tensors on the device loader (dataset.loader=auto,
    chosen when they fit the budget). Same model, batches, augmentation and channels_last; the first epoch of each
    run is a warm-up; runs alternate, and each figure is the median over --if-repeats runs."""
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
            run = run_trainer(base + [f"dataset.loader={loader}"], args.if_model, device, work)
            timed = run["epoch_s"][1:] or run["epoch_s"]
            rates[name].append(run["images_per_epoch"] / median(timed))
            say(f"  {name}: {rates[name][-1]:.0f} img/s")
    figures = {name: median(values) for name, values in rates.items()}
    slow, fast = figures.values()
    say(table(["path", "train img/s (median)"], [[name, f"{value:.0f}"] for name, value in figures.items()]))
    say(f"cached device path / per-sample path: {fast / slow:.2f}x")
    return {"img_per_s": figures, "runs": rates, "ratio": fast / slow}


AIRBENCH_RECIPES = ("airbench94", "airbench94_muon")


def airbench_overrides(args, device: torch.device, recipe: str) -> list[str]:
    batch = [f"trainer.batch_size={args.ab_batch_size}"] if args.ab_batch_size else []  # else the recipe's own
    return [f"experiment={recipe}", "dataset=synthetic", f"dataset.source.train_size={args.ab_train_size}",
            f"dataset.source.test_size={args.ab_test_size}", *batch, f"trainer.epochs={args.ab_epochs}",
            f"trainer.device={device}", "trainer.resume=null"]


def run_bare_airbench(overrides: list[str], device: torch.device) -> dict:
    """An airbench recipe as a hand-written loop: the same DeviceLoader batches, model (whitening init included),
    parameter groups, optimizers (SGD, and Muon for airbench94_muon) and their schedules, summed label-smoothed loss
    under the same autocast, lookahead every 5 steps where the recipe has it, and the final TTA test; no logging,
    checkpoints or callbacks."""
    import itertools
    import math

    from omegaconf import OmegaConf

    from cifarbench.callbacks.lookahead import Lookahead
    from cifarbench.callbacks.tta import tta_predictor
    from cifarbench.config import build
    from cifarbench.data.loaders import build_loaders
    from cifarbench.device import memory_format
    from cifarbench.engine.metrics import evaluate
    from cifarbench.engine.setup import build_data, init_from_data
    from cifarbench.optim.param_groups import MAIN, apply_training_windows, build_param_groups

    cfg = compose(overrides)
    t = cfg.trainer
    synchronize(device)
    started = time.perf_counter()
    torch.manual_seed(int(t.seed))
    data = build_data(cfg.dataset, int(t.seed))
    loaders = build_loaders(cfg, data, device, splits=("train", "test"))
    model = build(cfg.model).to(device, memory_format=memory_format(t.channels_last))
    init_from_data(model, data, device)
    extras = {name: entry.optimizer for name, entry in (cfg.get("optimizers") or {}).items()}
    groups = build_param_groups(model, OmegaConf.to_container(cfg.param_groups), lr=float(cfg.optimizer.lr),
                                weight_decay=float(cfg.optimizer.weight_decay),
                                optimizers={name: (float(node.lr), float(node.get("weight_decay", 0.0)))
                                            for name, node in extras.items()})
    optimizers = [build(node)([g for g in groups if g["optimizer"] == name])
                  for name, node in {MAIN: cfg.optimizer, **extras}.items()]
    steps_per_epoch = len(loaders.train)
    total = math.ceil(float(t.epochs) * steps_per_epoch)
    schedulers = [build(cfg.scheduler)(optimizer, steps_per_epoch=steps_per_epoch, epochs=float(t.epochs))
                  for optimizer in optimizers]
    lookahead = Lookahead() if "lookahead" in cfg.callbacks else None
    if lookahead is not None:
        lookahead.total_steps = total
        lookahead.average = {k: v.detach().clone() for k, v in model.state_dict().items()}
    smoothing = float(t.label_smoothing)
    precision = resolve_precision(device, t.precision)[0]  # the recipes say auto, as the trainer resolves it
    epoch_times: list[float] = []
    step = 0

    def epoch(number: int) -> int:
        nonlocal step
        model.train()
        for optimizer in optimizers:
            apply_training_windows(optimizer, number - 1)
        loaders.train.set_epoch(number)
        count = 0
        for images, labels in itertools.islice(loaders.train, min(steps_per_epoch, total - step)):
            with autocast(device, precision):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="sum")
            loss.backward()
            for optimizer, scheduler in zip(optimizers, schedulers):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            step += 1
            if lookahead is not None and step % 5 == 0:
                lookahead.update(model, lookahead.decay(step))
            if lookahead is not None and step >= total:
                lookahead.update(model, 1.0)
            count += len(labels)
        return count

    timed_epoch = _timed(epoch, device, epoch_times)
    seen = [timed_epoch(number) for number in range(1, math.ceil(float(t.epochs)) + 1)]
    test = evaluate(model, loaders.test, num_classes=data.num_classes, device=device, precision=precision,
                    predict=tta_predictor(str(t.tta)))
    synchronize(device)
    return {"epoch_s": epoch_times, "images": seen, "run_wall_s": time.perf_counter() - started,
            "test_acc": test["acc"], "batch_size": int(t.batch_size)}


def bench_airbench(args, device: torch.device) -> dict:
    """Each airbench recipe through the real Trainer (Trainer built and fit(), so data, whitening, evaluation and
    the final TTA test are in its whole-run time) against run_bare_airbench, alternating, median over repeats.
    Training img/s counts full epochs after the first (warm-up) one; the whole run is wall time from start to test."""
    recipes = [r.strip() for r in args.ab_recipes.split(",") if r.strip()]
    return {"recipes": {recipe: bench_airbench_recipe(args, device, recipe) for recipe in recipes}}


def bench_airbench_recipe(args, device: torch.device, recipe: str) -> dict:
    overrides = airbench_overrides(args, device, recipe)
    say(f"\n== {recipe}: synthetic {args.ab_train_size} train / {args.ab_test_size} test, batch "
        f"{args.ab_batch_size or 'as the recipe'}, {args.ab_epochs} epochs, {args.ab_repeats} x (trainer, bare) ==")
    runs: dict[str, list[dict]] = {"trainer": [], "bare": []}

    def run_side(side: str, tmp: Path) -> dict:
        if side == "bare":
            return run_bare_airbench(overrides, device)
        synchronize(device)
        started = time.perf_counter()
        run = run_trainer(overrides, "airbench94", device, tmp)
        run["run_wall_s"] = time.perf_counter() - started
        return run

    with tempfile.TemporaryDirectory(prefix="cifarbench_bench_airbench_") as tmp:
        # Both sides warm up alike (CUDA context, cuDNN autotuning, the allocator), untimed, so that neither pays
        # for the other; the timed pairs then alternate which side goes first.
        for _ in range(args.ab_warmup):
            for side in ("trainer", "bare"):
                run_side(side, Path(tmp))
        for index in range(args.ab_repeats):
            for side in pair_order(index):
                runs[side].append(run_side(side, Path(tmp)))
            say(f"  trainer epochs {_fmt_times(runs['trainer'][-1]['epoch_s'])} run "
                f"{runs['trainer'][-1]['run_wall_s']:.1f}s; bare epochs {_fmt_times(runs['bare'][-1]['epoch_s'])} "
                f"run {runs['bare'][-1]['run_wall_s']:.1f}s ({' first, '.join(pair_order(index))} second)")
    trainer_runs, bare_runs = runs["trainer"], runs["bare"]
    batch = bare_runs[-1]["batch_size"]
    full = args.ab_train_size // batch * batch  # images of a whole epoch

    def training_rate(times: list[float]) -> float:
        whole = [t for t in times[1:]][: max(int(args.ab_epochs) - 1, 1)]
        return full * len(whole) / sum(whole)

    trainer_rate = median([training_rate(r["epoch_s"]) for r in trainer_runs])
    bare_rate = median([training_rate(r["epoch_s"]) for r in bare_runs])
    trainer_wall = median([r["run_wall_s"] for r in trainer_runs])
    bare_wall = median([r["run_wall_s"] for r in bare_runs])
    trainer_fixed = median([fixed_cost_s(r) for r in trainer_runs])
    bare_fixed = median([fixed_cost_s(r) for r in bare_runs])
    result = {"batch_size": batch, "trainer_img_s": trainer_rate, "bare_img_s": bare_rate,
              "train_ratio": trainer_rate / bare_rate, "trainer_run_s": trainer_wall, "bare_run_s": bare_wall,
              "run_ratio": trainer_wall / bare_wall, "trainer_fixed_s": trainer_fixed, "bare_fixed_s": bare_fixed,
              "warmup_runs": args.ab_warmup, "goal": "train_ratio >= 0.95 (per step); fixed costs reported apart"}
    say(table(["measure", "trainer", "bare", "ratio", "goal"], [
        ["training img/s (whole epochs after the first)", f"{trainer_rate:.0f}", f"{bare_rate:.0f}",
         f"{result['train_ratio']:.3f}", ">= 0.95"],
        ["whole run s (build, train, evaluate, TTA test)", f"{trainer_wall:.1f}", f"{bare_wall:.1f}",
         f"{result['run_ratio']:.3f}", "-"],
        ["fixed s (the run outside its training epochs)", f"{trainer_fixed:.2f}", f"{bare_fixed:.2f}",
         f"+{trainer_fixed - bare_fixed:.2f} s", "-"],
    ], left=(0, 4)))
    return result


def pair_order(index: int) -> tuple[str, str]:
    """Which side of timed pair `index` runs first: they take turns, so neither always follows the other's run."""
    return ("trainer", "bare") if index % 2 == 0 else ("bare", "trainer")


def fixed_cost_s(run: dict) -> float:
    """A run's seconds outside its training epochs: building, data init, evaluation, TTA test and, for the trainer,
    its records (TensorBoard, checkpoints, the confusion-matrix image). On a fast GPU these dominate a short run,
    so they are reported apart from the per-step ratio."""
    return run["run_wall_s"] - sum(run["epoch_s"])


ALLOCATOR_CHILD = """
import resource, sys, time, torch
from cifarbench.config import build
from cifarbench.device import keep_freed_memory
sys.path.insert(0, sys.argv[4])
from benchmark import compose
tuned = keep_freed_memory(sys.argv[1] == "on")
cfg = compose([f"model={sys.argv[2]}", "dataset=synthetic"])
torch.manual_seed(0)
model = build(cfg.model).to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
batch = int(sys.argv[3])
x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (batch,))
def step():
    with torch.autocast("cpu", torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
step()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[5])):
    step()
after = resource.getrusage(resource.RUSAGE_SELF)
print(tuned, (time.perf_counter() - started) / int(sys.argv[5]), after.ru_stime - before.ru_stime,
      after.ru_minflt - before.ru_minflt)
"""


def bench_allocator(args, device: torch.device) -> dict:
    """Training steps of large-activation models (airbench94 at batch 1024, WRN-16-8 at batch 128; bf16 autocast,
    channels_last) in child processes with cifarbench.device.keep_freed_memory on and off (the setting is
    process-wide and one-way), alternating; s/step, kernel (sys) seconds and minor page faults per run."""
    if device.type != "cpu":
        say("\n== allocator: CPU only; skipped ==")
        return {"skipped": "not a CPU run"}
    say(f"\n== allocator: glibc keeps freed memory (on) or hands it back (off), {args.alloc_steps} steps ==")
    rows, result = [], {}
    for model, batch in (("airbench94", 1024), ("wrn_16_8", 128)):
        runs: dict[str, list[list[float]]] = {"on": [], "off": []}
        for _ in range(args.alloc_rounds):
            for mode in ("off", "on"):
                out = subprocess.run(
                    [sys.executable, "-c", ALLOCATOR_CHILD, mode, model, str(batch), str(REPO / "scripts"),
                     str(args.alloc_steps)], capture_output=True, text=True, check=True, cwd=REPO)
                runs[mode].append([float(v) for v in out.stdout.split()[1:]])
        figures = {mode: [median([r[i] for r in values]) for i in range(3)] for mode, values in runs.items()}
        result[model] = {mode: dict(zip(("s_per_step", "sys_s", "minor_faults"), v)) for mode, v in figures.items()}
        result[model]["speedup"] = figures["off"][0] / figures["on"][0]
        for mode in ("off", "on"):
            s_step, sys_s, faults = figures[mode]
            rows.append([f"{model} batch {batch}", mode, f"{s_step:.3f}", f"{sys_s:.2f}", f"{faults:,.0f}"])
        say(f"  {model}: on is {result[model]['speedup']:.2f}x the speed of off")
    say(table(["model", "keep freed memory", "s/step", "sys s", "minor faults"], rows, left=(0, 1)))
    return result


def _yes(flag: bool) -> str:
    return "on" if flag else "-"


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="cifarbench benchmarks (issue 5): data throughput, framework overhead, training-step options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    group = parser.add_argument_group("data (defaults: full profile; --quick shrinks them)")
    group.add_argument("--num-images", type=int, help="random uint8 images in the dataset (full: 50000)")
    group.add_argument("--data-images", type=int, help="images per timed window (full: 10240)")
    group.add_argument("--data-rounds", type=int, help="alternating windows per loader (full: 3)")
    group.add_argument("--data-batch-size", type=int, help="batch size of both loaders (full: 128)")
    group.add_argument("--workers", type=int, help="DataLoader worker processes of the per-sample path (full: 2)")
    group.add_argument("--loader-batch-sizes", help="DeviceLoader alone, crop+flip+Cutout, at each of these batch "
                       "sizes, against the 1M img/s goal (full: 128,512,2048)")
    group.add_argument(
        "--padding-mode",
        default="constant",
        choices=("constant", "reflect"),
        help="RandomCrop padding (conf/augment/standard.yaml uses constant)",
    )
    group = parser.add_argument_group("overhead")
    group.add_argument("--overhead-model", help="conf/model name (full: resnet20)")
    group.add_argument("--overhead-train-size", type=int, help="synthetic training images (full: 4096)")
    group.add_argument("--overhead-test-size", type=int, help="synthetic test images (full: 512)")
    group.add_argument("--overhead-batch-size", type=int, help="full: 128")
    group.add_argument("--overhead-epochs", type=int, help="epochs per run, the first one untimed (full: 3)")
    group.add_argument("--overhead-repeats", type=int, help="(trainer, bare) pairs, alternating (full: 3)")
    group = parser.add_argument_group("imagefolder (needs --image-folder)")
    group.add_argument("--image-folder", type=Path, help="root/train/<class>/* and root/test/<class>/* images")
    group.add_argument("--if-model", default="resnet20", help="conf/model name (default resnet20)")
    group.add_argument("--if-batches", type=int, help="training batches of 128 per epoch (full: 100)")
    group.add_argument("--if-epochs", type=int, help="epochs per run, the first one untimed (full: 2)")
    group.add_argument("--if-repeats", type=int, help="(per-sample, device) pairs, alternating (full: 2)")
    group = parser.add_argument_group("airbench (the airbench recipes: fit() against a bare loop)")
    group.add_argument("--ab-recipes", default=",".join(AIRBENCH_RECIPES),
                       help=f"comma-separated experiments (default: {','.join(AIRBENCH_RECIPES)})")
    group.add_argument("--ab-train-size", type=int, help="synthetic training images (full: 10240)")
    group.add_argument("--ab-test-size", type=int, help="synthetic test images (full: 2000)")
    group.add_argument("--ab-batch-size", type=int, help="full: each recipe's own (1024, 2000)")
    group.add_argument("--ab-epochs", type=float, help="epochs per run, the first one untimed (full: 3)")
    group.add_argument("--ab-repeats", type=int, help="(trainer, bare) pairs, alternating (full: 2)")
    group.add_argument("--ab-warmup", type=int, help="untimed runs of each side first (CUDA/cuDNN warm-up; full: 1)")
    group = parser.add_argument_group("allocator (CPU: glibc keeping freed memory, on against off)")
    group.add_argument("--alloc-steps", type=int, help="timed training steps per model and run (full: 4)")
    group.add_argument("--alloc-rounds", type=int, help="(on, off) pairs, alternating (full: 2)")
    group = parser.add_argument_group("options")
    group.add_argument("--options-models", help="comma-separated conf/model names (full: resnet20,resnet18)")
    group.add_argument(
        "--options-variants",
        help=f"comma-separated subset of {','.join(OPTION_VARIANTS)} (full: all; quick: no compile)",
    )
    group.add_argument("--options-batch-size", type=int, help="full: 128")
    group.add_argument("--options-warmup", type=int, help="untimed steps per variant (full: 2)")
    group.add_argument("--options-steps", type=int, help="timed steps per round (full: 2)")
    group.add_argument("--options-rounds", type=int, help="round-robin rounds (full: 3)")
    args = parser.parse_args(argv)
    for key, value in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if "imagefolder" in args.sections and args.image_folder is None:
        parser.error("--only imagefolder needs --image-folder PATH")
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cifarbench.errors import CifarbenchError

    try:
        device = resolve_device(args.device)
    except CifarbenchError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # As the trainer does (cudnn.benchmark and TF32 on CUDA; nothing on the CPU), once for every contender.
    configure_backends(device, deterministic=False)
    info = header(device, args)
    say(
        f"cifarbench benchmark ({info['profile']}): device {info['device']} ({info['device_name']}), "
        f"torch.get_num_threads()={info['torch_num_threads']}, os.cpu_count()={info['cpu_count']}"
    )
    say(f"torch {info['torch']}, torchvision {info['torchvision']}, python {info['python']}, git {info['git']}")
    say(f"host CPU: {cpu_name()}, torch CPU capability {info['cpu_capability']}; bf16: {info['cpu_bf16']}")
    say(f"command: {info['command']}")
    results: dict = {"header": info}
    runners = {"data": bench_data, "overhead": bench_overhead, "options": bench_options,
               "imagefolder": bench_imagefolder, "airbench": bench_airbench, "allocator": bench_allocator}
    started = time.perf_counter()
    for section in SECTIONS:
        if section in args.sections:
            section_started = time.perf_counter()
            results[section] = runners[section](args, device)
            results[section]["section_wall_s"] = time.perf_counter() - section_started
            # Every section's figures involve the host CPU (all of them on --device cpu; the per-sample loader's
            # workers on any device), so each carries its capability.
            results[section]["cpu_capability"] = info["cpu_capability"]
            say(f"[{section}: {results[section]['section_wall_s']:.0f} s, host CPU capability "
                f"{info['cpu_capability']}]")
    results["header"]["total_wall_s"] = time.perf_counter() - started
    say(f"\ntotal {results['header']['total_wall_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        say(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
