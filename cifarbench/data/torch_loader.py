"""The per-sample path: a torch DataLoader with worker processes and torchvision transforms.

It is the path for comparison with the usual CIFAR scripts and for datasets whose per-sample transforms have no
batched form. The on-device loader (device_loader.py) is the fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cifarbench.data.device_loader import _mix_seed
from cifarbench.data.splits import ImageTensors


class TransformedImages(Dataset):
    """Sample `(index, epoch)` is transformed with the torch RNG seeded from (seed, epoch, index).

    So a sample's augmentation depends on nothing else: not on the worker that draws it, not on what that worker
    drew before (persistent workers), not on where in the epoch a resumed run starts. Exact resume needs that.
    """

    def __init__(self, split: ImageTensors, transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0):
        self.split = split
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        # fork_rng: in the main process (num_workers=0) the global stream the trainer saves stays untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix_seed(self.seed, epoch, index))
            image = self.transform(self.split.images[index])
        return image, self.split.labels[index]


class _WithEpoch(torch.utils.data.Sampler):
    """The keys `(index, epoch)` of a DistributedSampler's (or any index list's) order."""

    def __init__(self, order, epoch_of):
        self.order = order
        self.epoch_of = epoch_of

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        epoch = self.epoch_of()
        return ((int(index), epoch) for index in self.order)


class TorchLoader:
    """Batches of (images, labels) on `device`, in the training dtype and memory format.

    The sampler is a DistributedSampler even on one process: it shuffles with (seed + epoch), so the order of an
    epoch depends on nothing but the seed and the epoch number, which makes resume and sharding by rank exact.
    """

    def __init__(
        self,
        split: ImageTensors,
        transform: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        augment_seed: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.device = device
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # The order comes from `seed` (trainer.seeds.data), each sample's augmentation from `augment_seed`
        # (trainer.seeds.augment).
        self.augment_seed = seed if augment_seed is None else int(augment_seed)
        self.sampler = DistributedSampler(
            TransformedImages(split, transform, self.augment_seed),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches of the current epoch already served
        # Worker seeds come from this generator; re-seeding it per epoch makes augmentation draws repeatable
        # (with persistent workers, only the first epoch's seeds are drawn from it).
        self.generator = torch.Generator()
        self.loader_options = dict(
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=self.generator,
        )
        self.loader = DataLoader(
            self.sampler.dataset,
            sampler=_WithEpoch(self.sampler, lambda: self.sampler.epoch),
            persistent_workers=persistent_workers and num_workers > 0,
            **self.loader_options,
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch to iterate next; a resumed mid-epoch position is kept if it is the same epoch."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0
        self.sampler.set_epoch(epoch)

    def restart(self) -> None:
        """Forget a partly served epoch (an evaluation cut short by trainer.limit_eval_batches)."""
        self.position = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees in one epoch."""
        return len(self.sampler) if not self.loader.drop_last else len(self.loader) * self.loader.batch_size

    def _remaining(self) -> DataLoader:
        """The rest of a resumed epoch: the same order, without the batches served before the stop."""
        order = list(self.sampler)[self.position * self.loader.batch_size :]
        return DataLoader(self.sampler.dataset, sampler=_WithEpoch(order, lambda: self.sampler.epoch),
                          **self.loader_options)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(self.augment_seed * 100_003 + self.epoch * 1_009 + self.position)
        loader = self._remaining() if self.position else self.loader
        non_blocking = self.loader.pin_memory
        for images, labels in loader:
            images = images.to(self.device, non_blocking=non_blocking)
            self.position += 1
            yield (
                images.to(dtype=self.dtype, memory_format=self.memory_format),
                labels.to(self.device, non_blocking=non_blocking),
            )
        self.epoch, self.position = self.epoch + 1, 0
        self.sampler.set_epoch(self.epoch)

    def close(self) -> None:
        """Stop the persistent worker processes now; a later iteration starts new ones. Without this they live as
        long as the loader: a Hydra multirun's jobs share one process, so each finished job's workers would stay
        until garbage collection reached its trainer."""
        iterator, self.loader._iterator = self.loader._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.sampler.set_epoch(self.epoch)
