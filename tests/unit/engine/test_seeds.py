"""trainer.seeds: weight init, data order and augmentation vary one at a time, and a run with seeds set apart still
resumes exactly."""

from __future__ import annotations

import pytest
import torch

from cifarbench.data import augment as A
from cifarbench.data.augment import torchvision_pipeline
from cifarbench.data.device_loader import DeviceLoader
from cifarbench.data.seeds import Seeds, run_seeds
from cifarbench.data.splits import ImageTensors
from cifarbench.data.torch_loader import TorchLoader
from tests.helpers.compare import same_weights
from tests.helpers.config import compose_config
from tests.helpers.runs import build_error, stopped_then_resumed, toy_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

OPS = [A.RandomCrop(padding=2), A.HorizontalFlip()]


def images(n: int = 64) -> ImageTensors:
    data = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageTensors(data, torch.arange(n))  # labels are the sample ids: a batch says which images it holds


def first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(1)
    return next(iter(loader))


def test_every_seed_follows_trainer_seed_unless_set_apart():
    assert run_seeds(compose_config(["trainer.seed=7"]).trainer) == Seeds(7, 7, 7)
    assert run_seeds(compose_config(["trainer.seed=7", "trainer.seeds.data=2"]).trainer) == Seeds(7, 2, 7)
    # A config from before trainer.seeds existed: trainer.seed drives all three, as it did then.
    cfg = compose_config(["trainer.seed=4", "~trainer.seeds"])
    assert run_seeds(cfg.trainer) == Seeds(4, 4, 4)


@pytest.mark.parametrize("make", ["device", "torch"])
def test_the_data_seed_orders_and_the_augment_seed_draws(make):
    """Same data seed: the same images in the same order, augmented differently by another augment seed. Same augment
    seed, another data seed: another order."""
    def loader(seed, augment_seed):
        if make == "device":
            return DeviceLoader(images(), 16, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, ops=OPS, shuffle=True,
                                drop_last=True, seed=seed, augment_seed=augment_seed)
        return TorchLoader(images(), torchvision_pipeline(OPS, (0.5,) * 3, (0.25,) * 3), 16, device=torch.device("cpu"),
                           shuffle=True, drop_last=True, seed=seed, augment_seed=augment_seed, num_workers=0)

    base_images, base_ids = first_batch(loader(0, 0))
    other_aug_images, other_aug_ids = first_batch(loader(0, 1))
    other_order_images, other_order_ids = first_batch(loader(1, 0))
    again_images, again_ids = first_batch(loader(0, 0))
    assert torch.equal(base_ids, again_ids) and torch.equal(base_images, again_images)  # the anchor: repeatable
    assert torch.equal(base_ids, other_aug_ids) and not torch.equal(base_images, other_aug_images)
    assert not torch.equal(base_ids, other_order_ids)


def test_the_init_seed_alone_sets_the_initial_weights(toy_conf, tmp_path):
    base = toy_trainer(toy_conf, tmp_path / "a").model.state_dict()
    data_and_augment = toy_trainer(toy_conf, tmp_path / "b", ["trainer.seeds.data=5", "trainer.seeds.augment=6"])
    init = toy_trainer(toy_conf, tmp_path / "c", ["trainer.seeds.init=5"])
    assert same_weights(base, data_and_augment.model.state_dict())
    assert not same_weights(base, init.model.state_dict())
    # ... and the loader's order follows the data seed only.
    assert torch.equal(toy_trainer(toy_conf, tmp_path / "d").loaders.train.epoch_indices(1),
                       init.loaders.train.epoch_indices(1))
    assert not torch.equal(init.loaders.train.epoch_indices(1), data_and_augment.loaders.train.epoch_indices(1))


def test_a_run_with_its_seeds_set_apart_resumes_bit_for_bit(toy_conf, tmp_path, monkeypatch):
    extra = ["trainer.epochs=2", "augment=standard", "trainer.resume=auto", "trainer.seeds.init=3",
             "trainer.seeds.data=4", "trainer.seeds.augment=5"]
    straight, resumed = stopped_then_resumed(toy_conf, tmp_path, monkeypatch, extra, step=3)
    assert resumed.state.global_step == straight.state.global_step == 32
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.state.history[-1]["train/loss"] == straight.state.history[-1]["train/loss"]
    # The anchor: the same config with one seed moved trains to other weights.
    other = toy_trainer(toy_conf, tmp_path / "other", [*extra[:-1], "trainer.seeds.augment=6"])
    other.fit()
    assert not same_weights(other.model.state_dict(), straight.model.state_dict())


@pytest.mark.parametrize("override, message", [
    ("trainer.repeats=0", "trainer.repeats=0 must be an integer >= 1"),
    ("trainer.repeats=2.5", "trainer.repeats=2.5 must be an integer >= 1"),
    ("trainer.seeds.data=abc", "trainer.seeds.data='abc' must be an integer"),
    ("+trainer.seeds.model=1", "unknown config key trainer.seeds.model: the keys there are: augment, data, init"),
])
def test_bad_repeats_and_seeds_get_one_line(override, message, tmp_path):
    assert message in build_error([override], tmp_path)
