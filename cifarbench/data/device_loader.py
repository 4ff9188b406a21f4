"""The fast data path: a whole split held on the training device as uint8, shuffled and augmented in batches.

No worker processes and no per-sample Python loop: each batch is one gather from the device tensor followed by the
batched augmentation ops (cifarbench.data.augment), normalisation, and the cast to the training dtype and memory
format. CIFAR's 50k training images are 150 MB as uint8, so they fit on any accelerator.

Randomness, and why resume is exact:
* the epoch's permutation comes from a generator seeded with (seed, epoch) on the device, so it is the same on
  every rank and can be recomputed from the epoch number alone;
* augmentation draws come from a second generator seeded anew for every batch with (seed, epoch, rank, batch):
  ranks see different images, and giving them independent draws keeps their augmentations uncorrelated;
* so the position in a run is two integers: `state_dict()` holds the epoch and the batches already served in it,
  and `load_state_dict()` continues with the very next batch exactly as an uninterrupted run would, on any kind of
  device. (A generator's state is device-specific: a CUDA one is 16 bytes, a CPU one 5,056, and neither loads into
  the other, so a run preempted on a GPU node could not resume mid-epoch elsewhere if the state were saved.)

Nothing in a batch reads values back from the device (no `.item()`, `.tolist()` or tensor-valued slice bounds):
on CUDA the host queues the next batch's gather and augmentation while the training step still runs. The
policy augmentations (AutoAugment, RandAugment, TrivialAugmentWide) are the one exception, with one read of their
group sizes per batch (see cifarbench/data/augment.py).

Sharding for distributed training: the permutation is cut into `world_size` equal strided shards (rank r takes
positions r, r + world_size, ...). With drop_last=False the permutation is first padded with its own head so it
divides evenly (a few images appear twice per epoch, as with torch's DistributedSampler) and the last batch may be
short; with drop_last=True the tail is dropped instead and every batch is full.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cifarbench.data.augment import AugmentOp, BatchAugment, Resize
from cifarbench.errors import ConfigError

if TYPE_CHECKING:
    from cifarbench.data.splits import ImageTensors

_MASK64 = (1 << 64) - 1


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), so (seed, epoch) neighbours give unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 31
    return state >> 1


class DeviceLoader:
    """Batches of (images, labels) from a split kept on `device`.

    images: float, normalised with (mean, std), in `dtype` and channels_last if asked; labels: int64.
    `ops` is a sequence of augmentation ops (or a ready BatchAugment). With no ops and no shuffling (evaluation)
    the whole split is normalised once and batches are views of that cache.

    Epochs: iterating runs the current epoch, then advances to the next. `set_epoch(e)` picks an epoch explicitly
    (as with DistributedSampler); it keeps a resumed mid-epoch position if `e` is the epoch already set.
    """

    def __init__(
        self,
        split: ImageTensors,
        batch_size: int,
        *,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        ops: Sequence[AugmentOp] | BatchAugment = (),
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment_seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        resize: Resize | None = None,
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)  # the order of each epoch
        # The augmentation draws (trainer.seeds.augment), apart from the order (trainer.seeds.data), so that the two
        # sources of run-to-run variance can be varied one at a time.
        self.augment_seed = self.seed if augment_seed is None else int(augment_seed)
        self.rank = rank
        self.world_size = world_size
        self.images = split.images.to(self.device).contiguous()
        self.labels = split.labels.to(self.device, torch.int64)
        if isinstance(ops, BatchAugment):
            self.augment = ops
        else:
            self.augment = BatchAugment(list(ops), mean, std, dtype=dtype, channels_last=channels_last, resize=resize)
        self.num_samples = self._shard_size(len(self.labels))
        if self.num_samples == 0:
            raise ConfigError(
                f"a split of {len(self.labels)} images leaves no samples for each of {world_size} ranks"
            )
        # Evaluation: nothing random happens, so normalise once and serve slices; unless the model's input size
        # differs (a pretrained model at 224 px), when each batch is resized as it is served, never the whole split.
        cached = not (self.augment.ops or shuffle or self.augment.resize is not None)
        self._cache = self.augment(self.images, None) if cached else None
        self._generator = torch.Generator(device=self.device)
        self._epoch = 0
        self._position = 0  # batches of the current epoch already served

    # --------------------------------------------------------------------------------------------- sizes
    def _shard_size(self, n: int) -> int:
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def epoch(self) -> int:
        return self._epoch

    # --------------------------------------------------------------------------------------------- order
    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for `epoch`, on the device (the same permutation on every rank)."""
        n = len(self.labels)
        if self.shuffle:
            order_generator = torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(n, generator=order_generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        total = self.num_samples * self.world_size
        if total > n:  # pad with the permutation's head so shards are equal (repeat it for tiny splits)
            order = order.repeat(math.ceil(total / n))
        return order[:total][self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = int(epoch)
            self._position = 0

    def restart(self) -> None:
        """Forget a partly served epoch (an evaluation cut short by trainer.limit_eval_batches)."""
        self._position = 0

    # ------------------------------------------------------------------------------------------ iterate
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self._epoch
        indices = self.epoch_indices(epoch)
        for batch in range(self._position, len(self)):
            index = indices[batch * self.batch_size : (batch + 1) * self.batch_size]
            # index_select, not images[index]: on the CPU it is about 10x faster for a batch gather.
            if self._cache is None:
                # Seeding sets the generator's seed and offset on the host: no kernel, no wait for the device.
                self._generator.manual_seed(_mix_seed(self.augment_seed, epoch, self.rank, 1, batch))
                images = self.augment(self.images.index_select(0, index), self._generator,
                                      {"index": index, "epoch": epoch, "seed": self.augment_seed})
            elif self.world_size == 1:  # unshuffled and unsharded: a slice of the cache, a view
                # The indices are 0, 1, 2, ...: the bounds come from the batch number, not from reading `index`
                # back from the device (each read waits for it).
                images = self._cache[batch * self.batch_size : (batch + 1) * self.batch_size]
            else:
                images = self._cache.index_select(0, index)
            labels = self.labels.index_select(0, index)
            self._position = batch + 1
            yield images, labels
        self._epoch = epoch + 1
        self._position = 0

    # ----------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """Everything needed to continue with the next batch, the same on every device: epoch and position (the
        permutation and each batch's augmentation draws follow from them and the seed)."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "augment_seed": self.augment_seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        seed = state.get("seed", self.seed)
        # A last.pt from before trainer.seeds drew both from one seed.
        saved = {"seed": seed, "augment_seed": state.get("augment_seed", seed),
                 "world_size": state.get("world_size", self.world_size)}
        current = {"seed": self.seed, "augment_seed": self.augment_seed, "world_size": self.world_size}
        if saved != current:
            raise ConfigError(
                f"the data-loader state was saved with {_settings(saved)}, this run has {_settings(current)}; "
                "resume with the same settings"
            )
        # A last.pt from before per-batch seeding also holds a "generator" state, of whichever device wrote it: not
        # needed, since every batch is seeded from its position.
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])


def _settings(values: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())
