"""A small, deterministic, learnable dataset made in memory: no download, no files.

Each class is a smooth random colour pattern. A sample is its class pattern, shifted by a few pixels, scaled in
brightness and covered in noise, so a convolutional network learns it in an epoch or two while a constant
guess stays at chance. Used by the offline smoke run and the end-to-end tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cifarbench.data.splits import ImageSplits, ImageTensors, channel_stats
from cifarbench.errors import ConfigError


def _class_patterns(num_classes: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(num_classes, channels, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _draw(patterns, count, noise, max_shift, generator) -> ImageTensors:
    num_classes, channels, size, _ = patterns.shape
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=generator)]
    images = patterns[labels]
    shifts = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=generator)
    images = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(images, shifts)])
    brightness = 0.75 + 0.5 * torch.rand(count, 1, 1, 1, generator=generator)
    images = images * brightness + noise * torch.randn(images.shape, generator=generator)
    return ImageTensors((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def synthetic(
    num_classes: int = 10,
    train_size: int = 2000,
    test_size: int = 500,
    image_size: int = 32,
    channels: int = 3,
    noise: float = 0.15,
    max_shift: int = 3,
    seed: int = 0,
) -> ImageSplits:
    if num_classes < 2 or train_size < num_classes or test_size < 1:
        raise ConfigError(
            f"synthetic dataset needs num_classes >= 2 and train_size >= num_classes, got num_classes={num_classes}, "
            f"train_size={train_size}, test_size={test_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    patterns = _class_patterns(num_classes, channels, image_size, generator)
    train = _draw(patterns, train_size, noise, max_shift, generator)
    test = _draw(patterns, test_size, noise, max_shift, generator)
    mean, std = channel_stats(train.images)
    return ImageSplits(
        train=train, val=None, test=test, classes=[f"class_{i}" for i in range(num_classes)], mean=mean, std=std
    )
