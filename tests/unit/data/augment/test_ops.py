"""Statistical and equivalence tests of the augmentation ops, batched and per-sample (torchvision), and the
alternating flip."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cifarbench.data import augment as A
from cifarbench.errors import ConfigError
from tests.helpers.images import MEAN, SIGMAS, STD, gen, natural_images, per_sample

# Tiny tensors: one intra-op thread is faster, and much faster on a shared, busy CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def binomial_tol(p: float, n: int) -> float:
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def coord_images(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1, channel 2 the sample id (mod 256): positions are readable."""
    rows = torch.arange(size).reshape(size, 1).expand(size, size) + 1
    cols = torch.arange(size).reshape(1, size).expand(size, size) + 1
    ids = torch.arange(n).remainder(256).reshape(n, 1, 1).expand(n, size, size)
    return torch.stack((rows.expand(n, -1, -1), cols.expand(n, -1, -1), ids), 1).to(torch.uint8).contiguous()


def crop_shift(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) of each crop of coord_images, read at the centre pixel, which never comes from padding."""
    centre = images.shape[-1] // 2
    dy = images[:, 0, centre, centre].long() - 1 - centre
    dx = images[:, 1, centre, centre].long() - 1 - centre
    return dy, dx


def test_flip_rate_batched_and_torchvision():
    n = 4000
    images = coord_images(n)
    flip = A.HorizontalFlip(p=0.5)
    batched = flip(images, gen(1))
    torchvision = per_sample(flip.torchvision(MEAN, STD), images)
    for out in (batched, torchvision):
        flipped = out[:, 1, 0, 0] == 32  # the last column came first
        assert torch.equal(out[flipped], images[flipped].flip(-1))
        assert torch.equal(out[~flipped], images[~flipped])
        assert abs(flipped.float().mean().item() - 0.5) < binomial_tol(0.5, n)
    assert torch.equal(A.HorizontalFlip(p=0.0)(images, gen()), images)
    assert torch.equal(A.HorizontalFlip(p=1.0)(images, gen()), images.flip(-1))


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_crop_offsets_cover_range_and_match_padding(mode):
    n, pad = 4000, 4
    images = coord_images(n)
    crop = A.RandomCrop(padding=pad, padding_mode=mode)
    out = crop(images, gen(2))
    assert out.shape == images.shape and out.dtype == torch.uint8
    dy, dx = crop_shift(out)
    for shift in (dy, dx):
        counts = torch.bincount(shift + pad, minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1 and (counts > 0).all()  # every offset -pad..pad occurs
        expected = 1 / (2 * pad + 1)
        assert ((counts / n - expected).abs() < binomial_tol(expected, n)).all()
    assert torch.corrcoef(torch.stack((dy.float(), dx.float())))[0, 1].abs() < SIGMAS / math.sqrt(n)
    # Each crop is exactly torchvision's pad + crop at the recovered offset.
    for i in range(0, n, 97):
        padded = TF.pad(images[i], [pad], padding_mode=mode)
        expected = TF.crop(padded, int(dy[i]) + pad, int(dx[i]) + pad, 32, 32)
        assert torch.equal(out[i], expected)


def test_crop_offset_histogram_matches_torchvision():
    n, pad = 3000, 4
    images = coord_images(n)
    crop = A.RandomCrop(padding=pad, padding_mode="reflect")
    batched = torch.stack(crop_shift(crop(images, gen(3))))
    torchvision = torch.stack(crop_shift(per_sample(crop.torchvision(MEAN, STD), images)))
    expected = 1 / (2 * pad + 1)
    for axis in range(2):
        h_b = torch.bincount(batched[axis] + pad, minlength=9) / n
        h_t = torch.bincount(torchvision[axis] + pad, minlength=9) / n
        assert ((h_b - h_t).abs() < SIGMAS * math.sqrt(2 * expected * (1 - expected) / n)).all()


def test_crop_to_smaller_size():
    images = coord_images(500)
    out = A.RandomCrop(size=24, padding=0)(images, gen())
    assert out.shape == (500, 3, 24, 24)
    tops = out[:, 0, 0, 0].long() - 1
    assert tops.min() == 0 and tops.max() == 8
    with pytest.raises(ConfigError):
        A.RandomCrop(padding_mode="edge")


def test_cutout_area_and_location():
    n, size, length = 4000, 32, 16
    cutout = A.Cutout(n_holes=1, length=length)
    images = torch.randn(n, 3, size, size, generator=gen(4)).abs() + 1  # never 0 before cutout
    out = cutout(images, gen(5))
    zero = out == 0
    assert (zero == zero[:, :1]).all()  # holes span all channels
    mask = zero[:, 0]
    assert torch.equal(out[~zero], images[~zero])
    rows, cols = mask.any(2), mask.any(1)
    top, bottom = rows.float().argmax(1), size - rows.flip(1).float().argmax(1)
    left, right = cols.float().argmax(1), size - cols.flip(1).float().argmax(1)
    height, width = bottom - top, right - left
    assert torch.equal(mask.sum((1, 2)), height * width)  # a single rectangle
    inside = (top > 0) & (bottom < size) & (left > 0) & (right < size)
    assert inside.any()
    assert (height[inside] == length).all() and (width[inside] == length).all()
    # Clipped at the borders: at least half a square survives, never more than a square.
    assert height.min() >= length // 2 and height.max() <= length
    # Recover each centre; it is uniform over the whole image (DeVries & Taylor), not just the interior.
    cy = torch.where(top == 0, bottom - length // 2, top + length // 2)
    cx = torch.where(left == 0, right - length // 2, left + length // 2)
    for centre in (cy, cx):
        counts = torch.bincount(centre, minlength=size)
        assert len(counts) == size and (counts > 0).all()
        assert ((counts / n - 1 / size).abs() < binomial_tol(1 / size, n)).all()


def test_cutout_torchvision_form_and_holes():
    cutout = A.Cutout(n_holes=1, length=16)
    images = torch.ones(300, 3, 32, 32)
    out = per_sample(cutout.torchvision(MEAN, STD), images)
    zeros = (out[:, 0] == 0).sum((1, 2))
    assert zeros.min() >= 8 * 8 and zeros.max() == 16 * 16
    two = A.Cutout(n_holes=2, length=8)(torch.ones(500, 1, 32, 32), gen())
    assert (two == 0).sum((1, 2, 3)).max() == 2 * 8 * 8  # two separate holes do occur
    assert torch.equal(A.Cutout(n_holes=0)(images, gen()), images)


def test_policy_tables_match_torchvision():
    assert [tuple(sub) for sub in v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies] == list(
        A.CIFAR10_POLICY
    )
    spaces = [(v2.AutoAugment, 10, False), (v2.RandAugment, 31, False), (v2.TrivialAugmentWide, 31, True)]
    for cls, bins, wide in spaces:
        for op, (fn, signed) in cls._AUGMENTATION_SPACE.items():
            expected = fn(bins, 28, 36)
            got = A.magnitude_bins(op, bins, 28, 36, wide=wide)
            assert (expected is None) == (got is None), op
            if expected is not None:
                assert torch.equal(got, expected), (cls.__name__, op)
            assert signed == (op in A.SIGNED_OPS), op
    assert set(v2.RandAugment._AUGMENTATION_SPACE) == set(A.RAND_AUGMENT_OPS)
    assert set(v2.TrivialAugmentWide._AUGMENTATION_SPACE) == set(A.RAND_AUGMENT_OPS)


def test_autoaugment_draws_every_subpolicy_evenly():
    n = 10000
    aa = A.AutoAugment()
    sub, steps = aa.sample(n, 32, 32, gen(6), torch.device("cpu"))
    counts = torch.bincount(sub, minlength=25)
    assert len(counts) == 25
    p = 1 / 25
    assert ((counts / n - p).abs() < binomial_tol(p, n)).all()
    ops = [name for name in A.POLICY_OPS if name != "Identity"]
    for step, draw in enumerate(steps):
        probs = torch.tensor([policy[step][1] for policy in A.CIFAR10_POLICY])[sub]
        # Each step fires with its sub-policy's probability.
        assert (
            abs(draw.active.float().mean() - probs.mean())
            < SIGMAS * math.sqrt((probs * (1 - probs)).sum()) / n
        )
        for s in range(25):
            name, _, bin_index = A.CIFAR10_POLICY[s][step]
            chosen = sub == s
            assert all(ops[i] == name for i in draw.op_ids[chosen].unique().tolist())
            bins = A.magnitude_bins(name, 10, 32, 32)
            magnitude = draw.magnitudes[chosen]
            if bins is None:
                assert (magnitude == 0).all()
            else:
                assert torch.allclose(magnitude.abs(), bins[bin_index].float().expand_as(magnitude))
                if name in A.SIGNED_OPS and bins[bin_index] != 0:
                    assert (magnitude > 0).any() and (magnitude < 0).any()


@pytest.mark.parametrize("magnitude", [0, 9, 30])
def test_randaugment_ops_uniform_and_magnitude_fixed(magnitude):
    n = 5000
    ra = A.RandAugment(num_ops=2, magnitude=magnitude)
    steps = ra.sample(n, 32, 32, gen(7), torch.device("cpu"))
    assert len(steps) == 2
    k = len(A.RAND_AUGMENT_OPS)
    op_ids = torch.cat([s.op_ids for s in steps])
    counts = torch.bincount(op_ids, minlength=k)
    assert ((counts / (2 * n) - 1 / k).abs() < binomial_tol(1 / k, 2 * n)).all()
    for draw in steps:
        for i, name in enumerate(A.RAND_AUGMENT_OPS):
            bins = A.magnitude_bins(name, 31, 32, 32)
            values = draw.magnitudes[draw.op_ids == i]
            expected = 0.0 if bins is None else float(bins[magnitude])
            assert torch.allclose(values.abs(), torch.full_like(values, expected))
            if name in A.SIGNED_OPS and expected:
                share = (values < 0).float().mean().item()
                assert abs(share - 0.5) < binomial_tol(0.5, len(values))


def test_trivialaugment_ops_and_bins_uniform_and_in_range():
    n = 8000
    ta = A.TrivialAugmentWide()
    bins, draw = ta.sample(n, 32, 32, gen(8), torch.device("cpu"))
    k = len(A.RAND_AUGMENT_OPS)
    counts = torch.bincount(draw.op_ids, minlength=k)
    assert ((counts / n - 1 / k).abs() < binomial_tol(1 / k, n)).all()
    bin_counts = torch.bincount(bins, minlength=31)
    assert len(bin_counts) == 31 and ((bin_counts / n - 1 / 31).abs() < binomial_tol(1 / 31, n)).all()
    for i, name in enumerate(A.RAND_AUGMENT_OPS):
        table = A.magnitude_bins(name, 31, 32, 32, wide=True)
        chosen = draw.op_ids == i
        if table is None:
            assert (draw.magnitudes[chosen] == 0).all()
        else:
            assert torch.allclose(draw.magnitudes[chosen].abs(), table[bins[chosen]].float())
            assert draw.magnitudes[chosen].abs().max() <= table.float().abs().max()


def _reference_policy_op(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's policy op on one image (as in its _AutoAugmentBase), written with public functionals."""
    nearest = v2.InterpolationMode.NEAREST
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        shear_xy = [shear, 0.0] if name == "ShearX" else [0.0, shear]
        return TF.affine(image, 0.0, [0, 0], 1.0, shear_xy, interpolation=nearest, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return TF.affine(image, 0.0, shift, 1.0, [0.0, 0.0], interpolation=nearest)
    if name == "Rotate":
        return TF.rotate(image, magnitude, interpolation=nearest)
    simple = {
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + magnitude),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + magnitude),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + magnitude),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + magnitude),
        "Posterize": lambda: TF.posterize(image, int(magnitude)),
        "Solarize": lambda: TF.solarize(image, 255.0 * magnitude),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
        "Invert": lambda: TF.invert(image),
    }
    return simple[name]()


@pytest.mark.parametrize("name", ["Posterize", "Solarize", "Invert", "Equalize", "AutoContrast"])
def test_deterministic_ops_equal_torchvision_exactly(name):
    images = natural_images(64, seed=9)
    bins = A.magnitude_bins(name, 31, 32, 32, wide=True)
    for bin_index in (0, 7, 20, 30) if bins is not None else (0,):
        m = 0.0 if bins is None else float(bins[bin_index])
        batched = A.POLICY_OPS[name](images, torch.full((64,), m))
        expected = torch.stack([_reference_policy_op(image, name, m) for image in images])
        assert torch.equal(batched, expected), (name, m)


@pytest.mark.parametrize(
    "name",
    [
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
    ],
)
def test_magnitude_ops_match_torchvision(name):
    """Per-sample magnitudes in one call, each against torchvision on its own image. Geometric ops match
    exactly; colour blends may differ by one level (torchvision's CPU kernel fuses the multiply-add)."""
    n = 62
    images = natural_images(n, seed=10)
    table = A.magnitude_bins(name, 31, 32, 32, wide=True).float()
    magnitudes = torch.cat((table, -table))[:n]
    batched = A.POLICY_OPS[name](images, magnitudes)
    expected = torch.stack([_reference_policy_op(im, name, float(m)) for im, m in zip(images, magnitudes)])
    diff = (batched.int() - expected.int()).abs()
    assert diff.max() <= 1
    assert (diff == 0).float().mean() > 0.97
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        assert diff.max() == 0


def test_hue_matches_torchvision():
    images = natural_images(40, seed=26)
    shifts = torch.linspace(-0.5, 0.5, 40)
    batched = A.adjust_hue(images, shifts)
    expected = torch.stack([TF.adjust_hue(im, float(h)) for im, h in zip(images, shifts)])
    diff = (batched.int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999
    grey = torch.full((2, 3, 4, 4), 77, dtype=torch.uint8)
    assert torch.equal(A.adjust_hue(grey, torch.tensor([0.3, -0.2])), grey)


@pytest.mark.parametrize("op", [A.AutoAugment(), A.RandAugment(), A.TrivialAugmentWide()], ids=repr)
def test_policy_batch_equals_per_sample_replay_of_its_draws(op):
    """Grouping by op is invisible: replaying each sample's draws one image at a time gives the same batch."""
    n = 96
    images = natural_images(n, seed=11)
    batched = op(images, gen(12))
    if isinstance(op, A.AutoAugment):
        _, steps = op.sample(n, 32, 32, gen(12), images.device)
        names = [name for name in A.POLICY_OPS if name != "Identity"]
    elif isinstance(op, A.RandAugment):
        steps = op.sample(n, 32, 32, gen(12), images.device)
        names = list(A.RAND_AUGMENT_OPS)
    else:
        steps = [op.sample(n, 32, 32, gen(12), images.device)[1]]
        names = list(A.RAND_AUGMENT_OPS)
    replay = []
    for i, image in enumerate(images):
        for draw in steps:
            if draw.active[i]:
                image = _reference_policy_op(image, names[draw.op_ids[i]], float(draw.magnitudes[i]))
        replay.append(image)
    diff = (batched.int() - torch.stack(replay).int()).abs()
    assert (diff == 0).float().mean() > 0.97
    assert (diff > 1).float().mean() < 0.003  # a 1-level blend difference can be amplified by a later op


def test_colorjitter_factors_order_and_per_sample_draws():
    n = 4000
    jitter = A.ColorJitter(0.2, 0.3, 0.4, 0.1)
    factors, order = jitter.sample_factors(n, gen(13), torch.device("cpu"))
    for j, (low, high) in enumerate([(0.8, 1.2), (0.7, 1.3), (0.6, 1.4), (-0.1, 0.1)]):
        assert factors[:, j].min() >= low and factors[:, j].max() <= high
        assert abs(factors[:, j].mean() - (low + high) / 2) < SIGMAS * (high - low) / math.sqrt(12 * n)
    assert torch.equal(order.sort(1).values, torch.arange(4).expand(n, 4))  # a permutation per sample
    first = torch.bincount(order[:, 0], minlength=4) / n
    assert ((first - 0.25).abs() < binomial_tol(0.25, n)).all()
    # Brightness alone scales each image by its own factor.
    images = torch.full((500, 3, 8, 8), 100, dtype=torch.uint8)
    out = A.ColorJitter(brightness=0.2)(images, gen(14))
    scale = out.float().mean((1, 2, 3)) / 100
    assert scale.min() >= 0.79 and scale.max() <= 1.21 and scale.unique().numel() > 30
    assert A.ColorJitter()._ranges == (None, None, None, None)


def test_random_erasing_rate_area_and_value():
    n, p = 4000, 0.5
    erasing = A.RandomErasing(p=p, value=0.0)
    images = torch.randn(n, 3, 32, 32, generator=gen(15)).abs() + 1
    out = erasing(images, gen(16))
    erased = out == 0
    area = erased[:, 0].sum((1, 2)).float() / (32 * 32)
    hit = area > 0
    assert abs(hit.float().mean() - p) < binomial_tol(p, n)
    assert area[hit].min() >= 0.02 * 0.5 and area[hit].max() <= 0.33 * 1.5  # rounding of the box sides
    assert torch.equal(out[~erased], images[~erased])
    # Same rate and mean area as torchvision's RandomErasing.
    tv = per_sample(erasing.torchvision(MEAN, STD), images[:2000])
    tv_area = (tv[:, 0] == 0).sum((1, 2)).float() / (32 * 32)
    assert abs((tv_area > 0).float().mean() - p) < binomial_tol(p, 2000)
    se = math.sqrt(area[hit].var() / hit.sum() + tv_area[tv_area > 0].var() / (tv_area > 0).sum())
    assert abs(area[hit].mean() - tv_area[tv_area > 0].mean()) < SIGMAS * se
    filled = A.RandomErasing(p=1.0, value=[1.0, 2.0, 3.0])(torch.zeros(10, 3, 32, 32), gen())
    assert set(filled[:, 2].unique().tolist()) == {0.0, 3.0}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize(
    "ranges", [(0.4, 0.4, 0.4, 0.2), (0.5, 0.0, 0.5, 0.0), (0.0, 0.0, 0.0, 0.3), (0.0, 0.6, 0.0, 0.2), (0.3, 0, 0, 0)]
)
def test_colorjitter_batch_equals_per_sample_replay_of_its_draws(ranges, channels):
    """The batched form blends whole batches with per-sample references and runs hue once; replaying each
    sample's own factors through the single kernels, in its own order, one image at a time, gives the same bits."""
    n = 300  # more than one of the CPU chunks
    images = natural_images(n, seed=27)[:, :channels].contiguous()
    jitter = A.ColorJitter(*ranges)
    batched = jitter(images, gen(28))
    factors, order = jitter.sample_factors(n, gen(28), images.device)
    kernels = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    replay = []
    for i in range(n):
        image = images[i : i + 1]
        for j in order[i].tolist():
            if jitter._ranges[j] is not None:
                image = kernels[j](image, factors[i, j : j + 1])
        replay.append(image)
    assert torch.equal(batched, torch.cat(replay))


def test_the_alternating_flip_is_a_fixed_coin_per_image_mirrored_every_other_epoch():
    from cifarbench.data.augment import AlternatingFlip

    op = AlternatingFlip()
    images = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 1, 2, 2).clone()
    images[:, :, :, 1] = 255  # the right column marks which way round an image is
    index = torch.arange(100, 164)

    def flipped(epoch, seed=0):
        return op(images, None, index=index, epoch=epoch, seed=seed)[:, 0, 0, 0] == 255

    first = flipped(1)
    assert 16 < int(first.sum()) < 48  # a coin per image
    assert torch.equal(flipped(2), ~first) and torch.equal(flipped(3), first) and torch.equal(flipped(4), ~first)
    assert torch.equal(flipped(1), first)  # the same from (seed, index, epoch) alone: exact on resume
    assert not torch.equal(flipped(1, seed=1), first)
    with pytest.raises(Exception, match="dataset.loader=device"):
        op.torchvision((0.5,), (0.5,))


def test_the_alternating_flip_shows_the_first_epoch_coin_in_odd_epochs_and_its_mirror_in_even_ones():
    from cifarbench.data.augment import AlternatingFlip

    images = torch.zeros(32, 1, 1, 2, dtype=torch.uint8)
    images[..., 1] = 255  # the right pixel marks which way round an image is
    index = torch.arange(32)
    coin = AlternatingFlip.first_epoch_flips(index, seed=5)
    assert 4 < int(coin.sum()) < 28
    for epoch in (1, 2, 3, 4):
        flipped = AlternatingFlip()(images, None, index=index, epoch=epoch, seed=5)[:, 0, 0, 0] == 255
        assert torch.equal(flipped, coin if epoch % 2 else ~coin), epoch
