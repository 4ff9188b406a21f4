"""DenseNet-BC for CIFAR (Huang et al. 2017, "Densely Connected Convolutional Networks", arXiv 1608.06993).

A 3x3 stem with 2k channels, then three dense blocks of n = (depth-4)/6 bottleneck layers. Each layer reads the
concatenation of all earlier feature maps of its block through BN-ReLU-conv1x1 (4k channels) and BN-ReLU-conv3x3,
and adds k new channels. Transitions (BN-ReLU-conv1x1-avgpool2) shrink the channels by the compression factor.

memory_efficient: the concatenation, BN, ReLU and 1x1 conv of every layer are recomputed in the backward pass
(gradient checkpointing) instead of stored. Without it, layer i keeps its own copy of the concatenated input and of
its normalised form, so activation memory grows quadratically with the number of layers in a block.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.utils.checkpoint
from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    ClassifierHead,
    StagedNet,
    blocks_for_depth,
    check_positive_int,
    check_probability,
    conv1x1,
    conv3x3,
    dropout_layer,
    init_weights,
)


@contextlib.contextmanager
def _restore_batchnorm_stats(module: nn.Module):
    """Undo running-statistics updates made inside the block: the recomputation must not count a batch twice."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(bottleneck_width) then BN-ReLU-conv3x3(growth_rate), on the concatenated inputs."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_width: int, dropout: float = 0.0,
                 memory_efficient: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, bottleneck_width)
        self.bn2 = nn.BatchNorm2d(bottleneck_width)
        self.conv2 = conv3x3(bottleneck_width, growth_rate)
        self.dropout = dropout_layer(dropout)
        self.memory_efficient = memory_efficient

    def _recompute_contexts(self):
        return contextlib.nullcontext(), _restore_batchnorm_stats(self.bn1)

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(torch.relu(self.bn1(torch.cat(features, 1))))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and any(f.requires_grad for f in features):
            # Eager recomputation would update the BN running stats a second time; undo that. Under torch.compile
            # the recomputation is part of the traced graph, which applies buffer updates once (and dynamo does
            # not accept a context_fn).
            kwargs = {} if torch.compiler.is_compiling() else {"context_fn": self._recompute_contexts}
            out = torch.utils.checkpoint.checkpoint(
                self.bottleneck,
                *features,
                use_reentrant=False,
                preserve_rng_state=False,  # the recomputed part draws no random numbers (dropout comes after it)
                **kwargs,
            )
        else:
            out = self.bottleneck(*features)
        return self.dropout(self.conv2(torch.relu(self.bn2(out))))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bottleneck_width: int,
                 dropout: float, memory_efficient: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck_width, dropout, memory_efficient)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Layers get the list of earlier outputs, not a running concatenation, so each concat can be recomputed.
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            conv1x1(in_channels, out_channels),
            nn.AvgPool2d(2),
        )


class DenseNet(StagedNet):
    """DenseNet-BC.

    Args:
        depth: 6n+4 (n bottleneck layers per dense block; 100, 190, 250, ...).
        growth_rate: k, the channels each layer adds.
        compression: fraction of channels a transition keeps, in (0, 1] (0.5 for the "C" in DenseNet-BC).
        bottleneck_factor: the 1x1 conv has bottleneck_factor * k channels (4 in the paper).
        dropout: dropout after each 3x3 conv (the paper uses none with augmentation).
        memory_efficient: recompute concat+BN+ReLU+1x1 conv in the backward pass to save activation memory.
    """

    def __init__(
        self,
        depth: int = 100,
        growth_rate: int = 12,
        compression: float = 0.5,
        *,
        bottleneck_factor: int = 4,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        n = blocks_for_depth(depth, 6, 4)
        if n is None:
            raise ConfigError(
                f"DenseNet-BC depth must be 6n+4 with n >= 1 (10, 40, 100, 190, 250, ...), got {depth!r}"
            )
        if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not 0 < compression <= 1:
            raise ConfigError(
                f"DenseNet compression must be in (0, 1] (the fraction of channels a transition keeps; "
                f"0.5 for DenseNet-BC, 1 for none), got {compression!r}"
            )
        check_positive_int("growth_rate", growth_rate)
        check_positive_int("bottleneck_factor", bottleneck_factor)
        check_probability("dropout", dropout)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)

        channels = 2 * growth_rate
        self.stem = conv3x3(in_channels, channels)
        stages = []
        for block_index in range(3):
            block = DenseBlock(n, channels, growth_rate, bottleneck_factor * growth_rate, dropout, memory_efficient)
            stages.append(block)
            channels = block.out_channels
            if block_index < 2:
                reduced = math.floor(channels * compression)
                stages.append(Transition(channels, reduced))
                channels = reduced
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(channels, num_classes, pre_act=True)
        init_weights(self)

    @property
    def memory_efficient(self) -> bool:
        return all(m.memory_efficient for m in self.modules() if isinstance(m, DenseLayer))

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = bool(value)
