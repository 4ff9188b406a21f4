"""Fast guards on the data pipeline, each written for a mutation that the rest of the suite let through: channel
statistics over chunks, the stratified validation split and the alternating flip."""

from __future__ import annotations

import pytest
import torch

from cifarbench.data.splits import channel_stats


def test_channel_stats_sum_over_every_chunk_of_a_large_split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=g)
    pixels = images.to(torch.float64).div(255.0).transpose(0, 1).reshape(3, -1)
    mean, std = channel_stats(images, chunk=3)  # chunks of 3, 3, 3 and 1 images
    assert mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-4)
    assert std == pytest.approx(pixels.std(dim=1, unbiased=False).tolist(), abs=1e-4)
    assert channel_stats(images, chunk=3) == channel_stats(images)


def test_a_stratified_split_holds_out_exactly_val_size_images_by_largest_remainder():
    from cifarbench.data.splits import validation_indices

    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    # Shares of 3: 1.5, 0.9, 0.6 -> floors 1, 0, 0; the 2 left over go to the largest remainders, classes 1 and 2.
    train, val = validation_indices(labels, 3, seed=0)
    assert len(val) == 3 and len(train) == 7
    assert sorted(train.tolist() + val.tolist()) == list(range(10))
    assert torch.bincount(labels[val], minlength=3).tolist() == [1, 1, 1]
    # 7 of 10: 3.5, 2.1, 1.4 -> 3, 2, 1 and the one left over to class 0.
    _, val = validation_indices(labels, 7, seed=0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [4, 2, 1]


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
