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


def fold_indices(labels: torch.Tensor, folds: int, fold: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices of K-fold cross-validation: fold `fold` of `folds` is held out.

    Stratified and deterministic: each class's images are shuffled by a generator seeded with `seed` alone (so the
    folds are the same for every model and every training seed, and pair across configurations), then dealt to
    the folds in turn, each class starting where the previous one stopped. Every image is in exactly one fold, each
    class's share of a fold differs from another fold's by at most one image, and so does the size of the folds.
    """
    n = len(labels)
    if n < folds:
        raise ConfigError(f"dataset.folds={folds} needs at least {folds} training images; the training set has {n}")
    generator = torch.Generator().manual_seed(seed)
    assigned = torch.empty(n, dtype=torch.long)
    start = 0
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assigned[members] = (torch.arange(len(members)) + start) % folds
        start = (start + len(members)) % folds
    return torch.nonzero(assigned != fold).flatten(), torch.nonzero(assigned == fold).flatten()


def check_folds(folds, fold) -> tuple[int, int] | None:
    """(folds, fold) as integers, None without cross-validation, or a ConfigError naming the fix."""
    if folds is None:
        return None
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"dataset.folds={folds!r} must be an integer >= 2 (the number of folds), or null for none")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"dataset.fold={fold!r} must be one of 0..{folds - 1} with dataset.folds={folds} "
                          f"(run them all with -m dataset.fold='range({folds})')")
    return folds, fold


def hold_out_validation(
    train: ImageTensors, val_size: float | int | None, seed: int, mode: str = "stratified",
    folds: tuple[int, int] | None = None,
) -> tuple[ImageTensors, ImageTensors | None]:
    """(train, val): with `folds` = (K, i) fold i of K-fold cross-validation (val_size is then not used), else
    `val_size` images held out (see validation_indices), else no validation split."""
    if folds is not None:
        train_ix, val_ix = fold_indices(train.labels, folds[0], folds[1], seed)
        return train.subset(train_ix), train.subset(val_ix)
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
