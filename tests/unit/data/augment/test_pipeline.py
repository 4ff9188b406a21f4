"""Augmentation pipelines: seeding, one-channel input, the batched and per-sample paths, build_pipeline and the
conf/augment options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cifarbench.data import augment as A
from cifarbench.errors import ConfigError
from tests.helpers.images import DEVICES, MEAN, SIGMAS, STD, gen, natural_images, per_sample
from tests.helpers.paths import REPO

CONF_AUGMENT = REPO / "conf" / "augment"


# Tiny tensors: one intra-op thread is faster, and much faster on a shared, busy CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


ALL_OPS = [
    A.RandomCrop(padding=4, padding_mode="reflect"),
    A.RandomCrop(padding=4, padding_mode="constant"),
    A.HorizontalFlip(),
    A.AutoAugment(),
    A.RandAugment(),
    A.TrivialAugmentWide(),
    A.ColorJitter(0.2, 0.2, 0.2, 0.1),
    A.Cutout(),
    A.RandomErasing(p=0.5),
]


def _input_for(op, n):
    images = natural_images(n, seed=17)
    return images if op.stage == "uint8" else A.normalize(images, MEAN, STD)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_same_seed_same_batch_and_independent_draws(op, device):
    n = 128
    images = _input_for(op, n).to(device)

    def seeded(seed):
        return torch.Generator(device=device).manual_seed(seed)

    out = op(images, seeded(18))
    assert out.dtype == images.dtype and out.shape == images.shape and out.device == images.device
    assert torch.equal(out, op(images, seeded(18)))
    assert not torch.equal(out, op(images, seeded(19)))
    # One image repeated: each copy gets its own draw, so the outputs differ.
    same = images[:1].expand(n, -1, -1, -1).contiguous()
    distinct = torch.unique(op(same, seeded(20)).flatten(1), dim=0).shape[0]
    assert distinct >= (2 if isinstance(op, A.HorizontalFlip) else 20)


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_ops_accept_one_channel_images(op):
    images = natural_images(16, seed=21)[:, :1]
    images = images if op.stage == "uint8" else A.normalize(images, MEAN[:1], STD[:1])
    assert op(images, gen()).shape == images.shape
    assert op.torchvision(MEAN[:1], STD[:1])(images[0]).shape == images[0].shape


@pytest.mark.parametrize(
    "names", [["standard"], ["seed_part3"], ["seed_resnext"], ["randaugment"], ["trivialaugment"]]
)
def test_batched_and_per_sample_pipelines_agree_on_channel_means(names):
    """The two paths are different draws of the same distribution: per-channel means agree within noise."""
    n = 1500
    augment = {}
    for name in names:
        augment.update(_compose_augment([f"augment={name}"]))
    pipeline = A.build_pipeline(augment, MEAN, STD)
    images = natural_images(n, seed=22)
    batched = pipeline.batched(images, gen(23)).mean((2, 3))
    per_sample_out = per_sample(pipeline.per_sample, images, seed=24).mean((2, 3))
    se = (batched.var(0) / n + per_sample_out.var(0) / n).sqrt()
    assert ((batched.mean(0) - per_sample_out.mean(0)).abs() < SIGMAS * se).all()
    se_std = se * 2  # the spread agrees too (loose: the std of a std estimate is not normal-small)
    assert ((batched.std(0) - per_sample_out.std(0)).abs() < SIGMAS * se_std + 0.02).all()


def test_normalize_matches_torchvision():
    images = natural_images(8, seed=25)
    expected = torch.stack(
        [TF.normalize(TF.to_dtype(im, torch.float32, scale=True), list(MEAN), list(STD)) for im in images]
    )
    assert torch.equal(A.normalize(images, MEAN, STD), expected)


def test_build_pipeline_orders_stages_and_formats_output():
    augment = {
        "cutout": {"_target_": "cifarbench.data.augment.Cutout", "length": 8},
        "crop": {"_target_": "cifarbench.data.augment.RandomCrop", "padding": 2},
        "flip": None,  # disabled entries are skipped
    }
    pipeline = A.build_pipeline(augment, MEAN, STD, dtype=torch.bfloat16, channels_last=True)
    assert [type(op) for op in pipeline.ops] == [A.Cutout, A.RandomCrop]
    # uint8 ops, then ToDtype + Normalize, then float ops, whatever the key order.
    steps = [type(t).__name__ for t in pipeline.per_sample.transforms]
    assert steps == ["PILToTensor", "_SameSizeRandomCrop", "ToDtype", "Normalize", "_PerSample"]
    assert [type(op) for op in pipeline.batched.uint8_ops] == [A.RandomCrop]
    out = pipeline.batched(natural_images(4), gen())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    one = pipeline.per_sample(natural_images(1)[0])
    assert one.dtype == torch.float32 and one.shape == (3, 32, 32)
    assert A.build_ops(None) == [] and A.build_ops({}) == []


def test_build_ops_rejects_bad_configs():
    with pytest.raises(ConfigError, match="augment.crop"):
        A.build_ops({"crop": {"padding": 4}})
    with pytest.raises(ConfigError, match="padding_mode"):
        A.build_ops({"crop": {"_target_": "cifarbench.data.augment.RandomCrop", "padding_mode": "edge"}})
    with pytest.raises(ConfigError, match="augment.x"):
        A.build_ops({"x": {"_target_": "torch.nn.Identity"}})
    with pytest.raises(ConfigError, match="augment.y"):
        A.build_ops({"y": {"_target_": "cifarbench.data.augment.NoSuchOp"}})


def _compose_augment(overrides: list[str]) -> dict:
    """Compose the augment group through Hydra with a minimal primary config next to conf/augment."""
    import tempfile

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "augment").symlink_to(CONF_AUGMENT, target_is_directory=True)
        (Path(tmp) / "primary.yaml").write_text("defaults:\n  - _self_\n  - augment: standard\n")
        with initialize_config_dir(config_dir=tmp, version_base="1.3"):
            cfg = compose("primary", overrides=overrides)
    return OmegaConf.to_container(cfg.augment)


def test_augment_group_composes_as_a_list_of_options():
    augment = _compose_augment(["augment=[standard,autoaugment,cutout]"])
    assert list(augment) == ["crop", "flip", "autoaugment", "cutout"]
    ops = A.build_ops(augment)
    assert [type(op) for op in ops] == [A.RandomCrop, A.HorizontalFlip, A.AutoAugment, A.Cutout]
    assert ops[0].padding_mode == "constant" and ops[3].length == 16


def test_seed_pipelines():
    part3 = A.build_ops(_compose_augment(["augment=seed_part3"]))
    assert [type(op) for op in part3] == [A.RandomCrop, A.HorizontalFlip, A.AutoAugment, A.Cutout]
    assert part3[0].padding_mode == "reflect" and part3[0].padding == 4
    assert (part3[3].n_holes, part3[3].length) == (1, 16)
    resnext = A.build_ops(_compose_augment(["augment=seed_resnext"]))
    assert [type(op) for op in resnext] == [A.RandomCrop, A.HorizontalFlip, A.ColorJitter, A.RandomErasing]
    assert (resnext[2].brightness, resnext[2].contrast, resnext[2].saturation, resnext[2].hue) == (
        0.2,
        0.2,
        0.2,
        0.1,
    )
    assert resnext[3].p == 0.25
    assert _compose_augment(["augment=none"]) == {}
    without_cutout = A.build_ops(_compose_augment(["augment=seed_part3", "augment.cutout=null"]))
    assert [type(op) for op in without_cutout] == [A.RandomCrop, A.HorizontalFlip, A.AutoAugment]


@pytest.mark.parametrize("path", sorted(CONF_AUGMENT.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_augment_file_builds_and_runs(path):
    ops = A.build_ops(_compose_augment([f"augment={path.stem}"]))
    images = natural_images(8)
    position = {"index": torch.arange(8), "epoch": 1, "seed": 0}
    assert A.BatchAugment(ops, MEAN, STD)(images, gen(), position).shape == (8, 3, 32, 32)
    if any(op.uses_position for op in ops):  # which image and epoch: only the on-device loader knows
        with pytest.raises(ConfigError, match="dataset.loader=device"):
            A.torchvision_pipeline(ops, MEAN, STD)
        return
    assert A.torchvision_pipeline(ops, MEAN, STD)(images[0]).shape == (3, 32, 32)
