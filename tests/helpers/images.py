"""Image batches and constants for the augmentation tests."""

from __future__ import annotations

import torch

MEAN = (0.4914, 0.4822, 0.4465)


STD = (0.2470, 0.2435, 0.2616)


SIGMAS = 5.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def natural_images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Smooth colour gradients plus noise and a per-image tint: enough structure for every op to act."""
    g = gen(seed)
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    base = torch.stack((xs * 7, ys * 7, (xs + ys) * 3.5), 0)
    tint = torch.rand(n, 3, 1, 1, generator=g) * 90
    noise = torch.randn(n, 3, size, size, generator=g) * 25
    return (base + tint + noise).clamp(0, 255).to(torch.uint8)


def per_sample(transform, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(image) for image in images])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
