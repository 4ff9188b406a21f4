"""The on-device loader: batch format, epoch coverage, rank shards, exact resume and no host waits per batch."""

from __future__ import annotations

import logging

import pytest
import torch

from cifarbench.data import augment as A
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.splits import ImageTensors
from cifarbench.errors import ConfigError
from tests.helpers.config import compose_config, tiny_cifar_overrides
from tests.helpers.events import scalars
from tests.helpers.host_traffic import HostTraffic
from tests.helpers.runs import train_in_process

MEAN = (0.5, 0.4, 0.3)


STD = (0.25, 0.2, 0.3)


# Tiny tensors: one intra-op thread is faster, and much faster on a shared, busy CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def split(n: int = 100, size: int = 8) -> ImageTensors:
    """Labels are the sample ids, so batches show exactly which images they hold."""
    images = torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return ImageTensors(images, torch.arange(n))


def loader(data: ImageTensors, batch_size: int = 16, **kwargs) -> DeviceLoader:
    options = {"device": "cpu", "mean": MEAN, "std": STD, "shuffle": True, "drop_last": False, "seed": 3}
    options.update(kwargs)
    return DeviceLoader(data, batch_size, **options)


def run_epoch(dl: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*dl)
    return torch.cat(images), torch.cat(labels)


TRAIN_OPS = [A.RandomCrop(padding=2), A.HorizontalFlip(), A.Cutout(length=4)]


def test_batch_format():
    dl = loader(split(), ops=TRAIN_OPS)
    images, labels = next(iter(dl))
    assert images.shape == (16, 3, 8, 8) and images.dtype == torch.float32 and images.is_contiguous()
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    assert len(dl) == 7 and dl.num_samples == 100
    fast = loader(split(), ops=TRAIN_OPS, dtype=torch.bfloat16, channels_last=True)
    images, _ = next(iter(fast))
    assert images.dtype == torch.bfloat16 and images.is_contiguous(memory_format=torch.channels_last)
    assert len(loader(split(), drop_last=True)) == 6


def test_every_sample_once_per_epoch_in_a_new_order():
    dl = loader(split(), ops=TRAIN_OPS)
    orders = []
    for _ in range(3):
        _, labels = run_epoch(dl)
        assert torch.equal(labels.sort().values, torch.arange(100))
        orders.append(labels)
    assert dl.epoch == 3
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    # The order depends only on (seed, epoch).
    assert torch.equal(orders[1], dl.epoch_indices(1))
    assert torch.equal(loader(split(), seed=3).epoch_indices(2), orders[2])
    assert not torch.equal(loader(split(), seed=4).epoch_indices(2), orders[2])
    _, last = run_epoch(loader(split(), drop_last=True))
    assert len(last) == 96 and len(last.unique()) == 96


def test_augmentation_is_applied_per_batch_and_per_epoch():
    data = split()
    dl = loader(data, ops=[A.HorizontalFlip(p=1.0)], shuffle=False)
    images, _ = run_epoch(dl)
    assert torch.equal(images, A.normalize(data.images, MEAN, STD).flip(-1))
    crop = loader(data, ops=[A.RandomCrop(padding=2)], shuffle=False)
    first, _ = run_epoch(crop)
    second, _ = run_epoch(crop)
    assert not torch.equal(first, second)  # fresh draws every epoch


def test_eval_mode_caches_the_normalised_split():
    data = split(50)
    dl = loader(data, batch_size=16, shuffle=False, dtype=torch.bfloat16, channels_last=True)
    assert dl._cache is not None
    batches = list(dl)
    expected = A.normalize(data.images, MEAN, STD).to(torch.bfloat16)
    assert torch.equal(torch.cat([b for b, _ in batches]), expected)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert batches[1][0].untyped_storage().data_ptr() == dl._cache.untyped_storage().data_ptr()  # a view
    assert (
        loader(data, shuffle=True)._cache is None
        and loader(data, shuffle=False, ops=TRAIN_OPS)._cache is None
    )


@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_shards_are_equal_disjoint_and_cover_the_epoch(drop_last):
    data, world = split(100), 3
    shards = [
        loader(data, ops=TRAIN_OPS, rank=r, world_size=world, drop_last=drop_last, batch_size=8)
        for r in range(3)
    ]
    labels = [run_epoch(dl)[1] for dl in shards]
    sizes = {len(x) for x in labels}
    if drop_last:
        assert sizes == {32}  # 33 per rank, last partial batch dropped
        assert len(torch.cat(labels).unique()) == 96
        assert all(len(dl) == 4 for dl in shards)
    else:
        assert sizes == {34}  # padded to 102 with the permutation's head
        everything = torch.cat(labels)
        assert torch.equal(everything.unique(), torch.arange(100))
        assert len(everything) - len(everything.unique()) == 2
    # The shards cut one permutation, the same on every rank.
    whole = loader(data).epoch_indices(0)
    interleaved = torch.stack([dl.epoch_indices(0)[:33] for dl in shards], 1).flatten()
    assert torch.equal(interleaved, whole[:99])
    with pytest.raises(ConfigError):
        loader(data, rank=3, world_size=3)


def test_ranks_draw_different_augmentations():
    data = ImageTensors(split(64).images[:1].expand(64, -1, -1, -1).contiguous(), torch.arange(64))
    ops = [A.RandomCrop(padding=2)]
    a, _ = run_epoch(loader(data, ops=ops, shuffle=False, rank=0, world_size=2))
    b, _ = run_epoch(loader(data, ops=ops, shuffle=False, rank=1, world_size=2))
    assert not torch.equal(a, b)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stop_after", [3, 7])  # mid-epoch, and exactly at the end of the first epoch
def test_state_dict_round_trip_reproduces_the_rest_exactly(stop_after, device):
    data, ops = split(100), [*TRAIN_OPS, A.AutoAugment()]
    reference = loader(data, ops=ops, batch_size=16, device=device)
    expected = [batch for _ in range(2) for batch in reference]  # two uninterrupted epochs
    assert expected[0][0].device.type == device

    interrupted = loader(data, ops=ops, batch_size=16, device=device)
    served, it = [], iter(interrupted)
    for _ in range(stop_after):
        served.append(next(it))
    if stop_after == len(interrupted):
        with pytest.raises(StopIteration):
            next(it)  # finishing the epoch moves the loader on
    state = interrupted.state_dict()

    resumed = loader(data, ops=ops, batch_size=16, device=device)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # a trainer that calls set_epoch keeps the mid-epoch position
    rest = list(resumed) + list(resumed)
    got = served + rest
    assert len(got) >= len(expected)
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    with pytest.raises(ConfigError):
        loader(data, seed=99).load_state_dict(state)


def test_set_epoch_selects_the_epoch():
    dl = loader(split())
    dl.set_epoch(5)
    _, labels = run_epoch(dl)
    assert torch.equal(labels, dl.epoch_indices(5)) and dl.epoch == 6


@pytest.mark.parametrize("device", DEVICES)
def test_batches_never_wait_for_the_device(device):
    """Serving a batch (gather, augment, normalise, cast, labels) builds no tensor from Python values and reads
    nothing back, so on a GPU the next batch is queued while the training step runs; a policy augmentation reads
    its group sizes, once per batch. (HostTraffic: see tests/helpers/host_traffic.py.)"""
    data = split(200)
    ops = [*TRAIN_OPS, A.ColorJitter(0.2, 0.2, 0.2, 0.1), A.RandomErasing(p=0.5)]
    cases = [
        (dict(ops=ops), 0),
        (dict(ops=ops, dtype=torch.bfloat16, channels_last=True, rank=1, world_size=2, drop_last=True), 0),
        (dict(shuffle=False), 0),  # evaluation: views of the normalised split
        (dict(shuffle=False, rank=0, world_size=2), 0),
        (dict(ops=[*TRAIN_OPS, A.AutoAugment()]), 1),
    ]
    for options, reads in cases:
        batches = iter(loader(data, batch_size=16, device=device, **options))
        next(batches)  # the first batch may fill the per-device caches of constants
        for _ in range(4):
            with HostTraffic() as traffic:
                next(batches)
            assert len(traffic.of("read")) <= reads, (options, traffic.events)
            assert traffic.of("from_python") == [] and traffic.of("transfer") == [], (options, traffic.events)


# ------------------------------------------------------------------------------- image folders
def test_an_image_folder_that_fits_trains_through_the_device_loader(tmp_path, toy_conf, caplog):
    from PIL import Image

    from cifarbench.data.device_loader import DeviceLoader
    from cifarbench.data.torch_loader import TorchLoader

    for split, count in (("train", 32), ("test", 8)):
        for label, colour in (("cat", 40), ("dog", 220)):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(count // 2):
                Image.new("RGB", (20, 24), (colour, i, 0)).save(tmp_path / "images" / split / label / f"{i}.png")
    caplog.set_level(logging.INFO, logger="cifarbench")
    folder = [f"hydra.searchpath=[file://{toy_conf}]", "model=tiny_conv", "dataset=imagefolder",
              f"dataset.source.root={tmp_path / 'images'}", "dataset.num_workers=0", "trainer.device=cpu",
              f"paths.data_dir={tmp_path / 'data'}", "trainer.batch_size=8", "trainer.progress_bar=false"]

    def trainer(run: str, extra=()):
        from cifarbench.engine.trainer import Trainer

        return Trainer(compose_config(folder + list(extra)), tmp_path / run, {})

    fits = trainer("run")
    assert isinstance(fits.loaders.train, DeviceLoader) and fits.data.num_classes == 2
    assert "dataset.loader=auto: the device loader, since its 0.00 GiB of decoded images fit" in caplog.text
    assert list((tmp_path / "data" / "cache" / "imagefolder").glob("*.pt"))
    large = trainer("run2", ["dataset.source.cache_budget_gb=1e-9"])
    assert isinstance(large.loaders.train, TorchLoader)


def test_device_and_torch_loaders_both_train_and_log_the_same_metrics(tmp_path, cifar_root):
    runs = {}
    for loader in ("device", "torch"):
        runs[loader] = train_in_process(
            tiny_cifar_overrides(cifar_root) + [f"dataset.loader={loader}", "augment=[standard,cutout]"],
            tmp_path / loader,
        )
    assert set(scalars(tmp_path / "device")) == set(scalars(tmp_path / "torch"))
    assert set(runs["device"]["final"]) == set(runs["torch"]["final"])
    for result in runs.values():
        assert result["status"] == "completed" and result["final"]["train/loss"] > 0


def test_device_and_torch_loaders_serve_the_same_normalised_images(cifar_root):
    """Without augmentation the two data paths must agree on every value: the test batches in order, and the
    training epoch as a set of images (each path shuffles with its own generator)."""
    from cifarbench.data.loaders import build_loaders
    from cifarbench.engine.setup import build_data

    served = {}
    for loader in ("device", "torch"):
        cfg = compose_config(tiny_cifar_overrides(cifar_root) + [f"dataset.loader={loader}", "augment=none",
                                                                 "trainer.batch_size=40"])
        data = build_data(cfg.dataset, 0)
        loaders = build_loaders(cfg, data, torch.device("cpu"))
        train = torch.cat([images for images, _ in loaders.train])
        order = train.flatten(1).sum(dim=1).argsort()
        served[loader] = {
            "test": torch.cat([images for images, _ in loaders.test]),
            "test_labels": torch.cat([labels for _, labels in loaders.test]),
            "train": train[order],
        }
    assert served["device"]["train"].shape == (200, 3, 32, 32)
    for key in ("test", "test_labels", "train"):
        assert torch.allclose(served["device"][key].float(), served["torch"][key].float(), atol=1e-5), key
