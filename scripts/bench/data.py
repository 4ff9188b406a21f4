"""data: the seed articles' per-sample pipeline against cifarbench's DeviceLoader, and the DeviceLoader alone.

The per-sample path is torchvision `T.Compose` on PIL images from a CIFAR-shaped uint8 array (as
torchvision.datasets.CIFAR10 hands them out), in a torch DataLoader with 2 worker processes, batch 128, persistent
workers; the device path is cifarbench's DeviceLoader (the whole split on the device, augmented in batches) with the
same ops, on the chosen device. Configurations:
  (a) RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize + Cutout(16)
  (b) the same with AutoAugment(CIFAR10) after the flip.
Random uint8 images, so nothing is downloaded. The two loaders are timed in alternating windows of --data-images
images and each figure is the median over --data-rounds windows. Every per-sample window gets its own DataLoader:
worker start-up and the batches its workers prefetched are skipped untimed, and the workers are stopped before the
device path is timed (idle persistent workers would keep prefetching and steal its CPU). On CUDA the per-sample
batches are copied to the device (pinned memory, non_blocking) inside the timed window, as training would need them
there. The device/per-sample ratio of each configuration is judged against goals.DATA_GOALS.

Then the DeviceLoader alone (crop + flip + Cutout, no training) at each of --loader-batch-sizes, its best figure
judged against goals.LOADER_GOAL_IMG_S (1M img/s).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.common import fmt_rates, median, say, table
from bench.goals import DATA_GOALS, LOADER_GOAL_IMG_S
from cifarbench.data.augment import AutoAugment, Cutout, HorizontalFlip, RandomCrop
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.splits import ImageTensors
from cifarbench.device import synchronize

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


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


def run(args, device: torch.device) -> dict:
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
        say(f"  ({key}) per-sample {fmt_rates(per_sample)} img/s, device {fmt_rates(on_device)} img/s")
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

