"""SimpleCNN: the plain 6-conv baseline of the seed article's comparison table.

The seed article reports a "Simple CNN (6 layers)" with 2.85M parameters (93.12% CIFAR-10, 71.45% CIFAR-100) but does
not give its architecture. This is our own VGG-style design sized to match that parameter count: six 3x3 conv-BN-ReLU
layers of 64, 128 | 128, 256 | 256, 512 channels with a 2x2 max-pool after every pair, then global average pooling
and a two-layer classifier (512 -> 1024 -> classes) with dropout. With the defaults it has 2.83M
parameters for 10 classes. Its accuracy is not the seed's figure by construction: treat it as a no-shortcut baseline.
"""

from __future__ import annotations

from torch import nn

from cifarbench.errors import ConfigError

from .layers import (
    ClassifierHead,
    StagedNet,
    check_int_sequence,
    check_positive_int,
    check_probability,
    conv_bn_act,
    init_weights,
)


class SimpleCNN(StagedNet):
    """3x3 conv layers with a max-pool after every pair, global average pooling, hidden linear layer, classifier.

    Args:
        channels: output channels of each conv layer; an even number of entries (pooled in pairs).
        hidden: width of the hidden linear layer (0 for a single linear classifier).
        dropout: dropout before each linear layer.
    """

    def __init__(
        self,
        channels=(64, 128, 128, 256, 256, 512),
        hidden: int = 1024,
        dropout: float = 0.3,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        channels = check_int_sequence("channels", channels)
        if len(channels) % 2:
            raise ConfigError(f"SimpleCNN channels must have an even number of entries (convs are pooled in pairs), "
                              f"got {len(channels)}: {list(channels)!r}")
        check_positive_int("hidden", hidden, minimum=0)
        check_probability("dropout", dropout)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)

        self.stem = nn.Identity()
        stages = []
        width = in_channels
        for first, second in zip(channels[0::2], channels[1::2]):
            stages.append(nn.Sequential(conv_bn_act(width, first), conv_bn_act(first, second), nn.MaxPool2d(2)))
            width = second
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(width, num_classes, hidden=hidden, dropout=dropout)
        init_weights(self)
