"""In-memory image splits shared by every dataset builder and both loaders."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifarbench.errors import ConfigError


@dataclass
class ImageTensors:
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[indices], self.labels[indices])


@dataclass
class ImageSplits:
    """What every dataset builder returns; the trainer needs nothing else about a dataset."""

    train: ImageTensors
    val: ImageTensors | None
    test: ImageTensors
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # (loader, reason) for dataset.loader=auto, where the source knows best (an image folder's size); else device.
    preferred_loader: tuple[str, str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]


def validation_indices(labels: torch.Tensor, val_size: float | int, seed: int, mode: str = "stratified"):
    """Split train indices into (train, val).

    `val_size` is a count (int >= 1) or a fraction in (0, 1). "stratified" keeps each class's share and draws
    with a seeded generator; "tail" holds out the last `val_size` images by index, as some published recipes do.
    """
    n = len(labels)
    count = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if count <= 0:
        raise ConfigError(f"dataset.val_size={val_size} leaves no validation images; use null to disable the split")
    if count >= n:
        raise ConfigError(
            f"dataset.val_size={val_size} asks for {count} validation images but the training set has only {n}; "
            f"use a smaller count or a fraction such as 0.1"
        )
    if mode == "tail":
        order = torch.arange(n)
        return order[: n - count], order[n - count :]
    if mode != "stratified":
        raise ConfigError(f"dataset.val_split={mode!r} is not supported; use stratified or tail")
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    # Largest-remainder allocation: class shares that add up to exactly `count`.
    exact = torch.tensor([len(ix) * count / n for ix in per_class], dtype=torch.float64)
    quota = exact.floor().long()
    short = count - int(quota.sum())
    if short > 0:
        quota[torch.argsort(exact - quota, descending=True)[:short]] += 1
    val_parts, train_parts = [], []
    for ix, q in zip(per_class, quota.tolist()):
        shuffled = ix[torch.randperm(len(ix), generator=generator)]
        val_parts.append(shuffled[:q])
        train_parts.append(shuffled[q:])
    return torch.sort(torch.cat(train_parts)).values, torch.sort(torch.cat(val_parts)).values


def hold_out_validation(
    train: ImageTensors, val_size: float | int | None, seed: int, mode: str = "stratified"
) -> tuple[ImageTensors, ImageTensors | None]:
    if val_size is None or val_size == 0:
        return train, None
    train_ix, val_ix = validation_indices(train.labels, val_size, seed, mode)
    return train.subset(train_ix), train.subset(val_ix)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks so big sets don't need a float copy."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
