"""airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498): the network of the
CIFAR-10 speed record, about 2M parameters.

A frozen 2x2 "whitening" convolution (its filters computed from the training data, see `init_from_data`), GELU,
three groups of conv3x3 -> MaxPool2 -> BN -> GELU -> conv3x3 -> BN -> GELU without residual connections (airbench96,
`residual=True`: a third conv3x3 -> BN -> GELU and a shortcut over the last two), MaxPool(3),
a bias-free linear head and a fixed scale on the logits (1/9; airbench94_muon divides by the width, 256, and starts
the head at unit std). Convolutions are Dirac-initialised on their first
`in_channels` filters, so each group starts close to passing its input through; BatchNorm keeps its scale at 1 and
trains only its bias. The widths are arguments, so wider variants are a YAML change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cifarbench.errors import ConfigError
from cifarbench.models.layers import InitializedFromData


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution without bias whose first in_channels filters start as the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: self.in_channels])


class ShiftOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (not trained) and whose bias trains."""

    def __init__(self, num_features: int, momentum: float, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


RESIDUAL_MODES = {False: None, True: "gelu_then_add", "gelu_then_add": "gelu_then_add",
                  "add_then_gelu": "add_then_gelu"}


class ConvGroup(nn.Module):
    """conv -> MaxPool2 -> BN -> GELU, then conv -> BN -> GELU; `residual` adds a third conv -> BN and a shortcut
    from after the first stage over the last two: "gelu_then_add" (or true; airbench96's package) applies the GELU
    before adding the shortcut, "add_then_gelu" (airbench96_faster) after."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float, residual: bool | str = False):
        super().__init__()
        self.conv1 = DiracConv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ShiftOnlyBatchNorm(out_channels, bn_momentum)
        self.conv2 = DiracConv(out_channels, out_channels)
        self.norm2 = ShiftOnlyBatchNorm(out_channels, bn_momentum)
        if residual not in RESIDUAL_MODES:
            raise ConfigError(f"model.residual={residual!r} is not one of false, true, gelu_then_add, add_then_gelu")
        self.residual = RESIDUAL_MODES[residual]
        if self.residual:
            self.conv3 = DiracConv(out_channels, out_channels)
            self.norm3 = ShiftOnlyBatchNorm(out_channels, bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        if not self.residual:
            return self.act(self.norm2(self.conv2(x)))
        shortcut = x
        x = self.norm3(self.conv3(self.act(self.norm2(self.conv2(x)))))
        return self.act(x) + shortcut if self.residual == "gelu_then_add" else self.act(x + shortcut)


class WhiteningConv(nn.Conv2d):
    """k x k convolution, no padding, whose filters whiten the image patches (frozen); its bias trains."""

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4, zero_bias: bool = True):
        self.zero_bias = zero_bias  # read by reset_parameters, which nn.Conv2d's constructor calls
        patch = in_channels * kernel_size**2
        super().__init__(in_channels, 2 * patch, kernel_size, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.zero_bias:  # airbench94; airbench94_muon keeps PyTorch's uniform conv-bias init
            nn.init.zeros_(self.bias)

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Filters from the patch covariance of `images` (normalised, N x C x H x W): each eigenvector scaled by
        1/sqrt(eigenvalue + eps), largest eigenvalue first, then the same filters negated."""
        k = self.kernel_size[0]
        c = images.shape[1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c, k, k)
        flat = patches.reshape(len(patches), -1)
        covariance = flat.T @ flat / len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")
        eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
        filters = eigenvectors.T.reshape(c * k * k, c, k, k).flip(0) / torch.sqrt(eigenvalues + self.eps)
        self.weight.copy_(torch.cat((filters, -filters)).to(self.weight.dtype))


class Airbench94(InitializedFromData):
    data_init_samples = 5000  # airbench initialises its whitening from the first 5,000 training images

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 256, 256),
        bn_momentum: float = 0.4,  # PyTorch's convention; airbench writes 0.6 in its own (1 - momentum)
        logit_scale: float = 1 / 9,
        whiten_kernel_size: int = 2,
        whiten_eps: float = 5e-4,
        whiten_zero_bias: bool = True,
        head_init_std: float | None = None,
        residual: bool | str = False,  # airbench96's groups: a third conv and a shortcut (see ConvGroup)
    ):
        super().__init__()
        self.whiten = WhiteningConv(in_channels, whiten_kernel_size, whiten_eps, whiten_zero_bias)
        self.act = nn.GELU()
        channels = [self.whiten.out_channels, *widths]
        self.groups = nn.Sequential(*(ConvGroup(a, b, bn_momentum, residual) for a, b in zip(channels, channels[1:])))
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(channels[-1], num_classes, bias=False)
        if head_init_std is not None:  # airbench94_muon starts its head at unit std, PyTorch's init rescaled
            with torch.no_grad():
                self.head.weight.mul_(head_init_std / self.head.weight.std())
        self.logit_scale = logit_scale

    def init_from_data(self, images: Tensor) -> None:
        """The data-dependent step a fresh run takes once: the whitening filters from normalised training images."""
        self.whiten.init_from_data(images)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.groups(self.act(self.whiten(x))))
        return self.head(x.flatten(1)) * self.logit_scale
