"""A trained checkpoint as a classifier that stands on its own: the run's preprocessing (resize to what the model
was trained on, the run's normalisation) and optionally a softmax inside one module, in eval form. Export
(cifarbench.deploy.export) writes it to ONNX or TorchScript; predict (cifarbench.deploy.predict) runs it on image files.

Its input is what any image library gives: float images in [0, 1], (N, C, H, W), RGB (or one channel for grey
datasets), at the size the run trained on (`Deployable.image_size`); the batch size is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.checkpoint.io import load_checkpoint, model_from_checkpoint, stored_config

# Image sizes of the built-in datasets, for checkpoints written before best.pt recorded the size it trained on.
DATASET_IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "fashion_mnist": 28, "synthetic": 32}


class DeployedClassifier(nn.Module):
    """images in [0, 1] -> (resize) -> (x - mean) / std -> the network -> logits, or probabilities with softmax."""

    def __init__(self, model: nn.Module, mean, std, resize_to: int | None = None, interpolation: str = "bilinear",
                 softmax: bool = False):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.resize_to, self.interpolation, self.softmax = resize_to, interpolation, softmax

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """What the network itself takes: resized to its input size, normalised as in training."""
        if self.resize_to is not None:
            images = F.interpolate(images, size=(self.resize_to, self.resize_to), mode=self.interpolation,
                                   align_corners=False)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.preprocess(images))
        return logits.softmax(dim=1) if self.softmax else logits


@dataclass
class Deployable:
    """A checkpoint ready for export or prediction: the classifier and what its users need to know."""

    classifier: DeployedClassifier
    classes: list[str]
    in_channels: int
    image_size: int  # height and width of the images the run trained on; inputs are resized to it first
    model_name: str
    config: object  # the run's stored config (DictConfig)
    source: Path


def load_deployable(path: str | Path, softmax: bool = False) -> Deployable:
    """best.pt (or last.pt) -> a Deployable in eval form (dropout off, BatchNorm's running statistics, ShakeDrop's
    expectation branch): what export and predict run."""
    from cifarbench.models.timm_adapter import input_spec

    path = Path(path).expanduser()
    payload = load_checkpoint(path)
    config = stored_config(payload)
    model = model_from_checkpoint(payload, source=str(path))
    spec = input_spec(config.model)
    classifier = DeployedClassifier(
        model, payload["mean"], payload["std"], resize_to=spec.size if spec is not None else None,
        interpolation=spec.interpolation if spec is not None else "bilinear", softmax=softmax,
    ).eval()
    image_size = payload.get("image_size") or config.dataset.get("image_size") or DATASET_IMAGE_SIZES.get(
        str(config.dataset.get("name")), 32)
    return Deployable(classifier=classifier, classes=list(payload["classes"]),
                      in_channels=int(payload.get("in_channels", len(payload["mean"]))), image_size=int(image_size),
                      model_name=str(payload.get("model_name")), config=config, source=path)
