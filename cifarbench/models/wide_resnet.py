"""Wide Residual Networks (Zagoruyko & Komodakis 2016, arXiv 1605.07146).

WRN-d-k: a 16-channel 3x3 stem, then 3 stages of n = (d-4)/6 pre-activation "wide basic" blocks with 16k, 32k and
64k channels, dropout between the two 3x3 convs of each block, and a 1x1 projection shortcut where the shape changes
(it reads the pre-activated input, as in the authors' code). The network ends with BN-ReLU, global pooling, linear.
The wide basic block is the pre-activation basic block with dropout, so it comes from preact_resnet.
"""

from __future__ import annotations

import functools

from cifarbench.errors import ConfigError

from .layers import (
    ClassifierHead,
    StagedNet,
    blocks_for_depth,
    check_positive_int,
    check_probability,
    conv3x3,
    init_weights,
    make_stages,
)
from .preact_resnet import PreActBasicBlock


class WideResNet(StagedNet):
    """WRN-depth-widen_factor.

    Args:
        depth: total conv+linear layers, 6n+4 (16, 22, 28, 40, ...).
        widen_factor: k, the width multiplier of the three stages (16k, 32k, 64k channels).
        dropout: dropout probability between the convs of each block (the paper uses 0.3 for WRN-28-10).
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        n = blocks_for_depth(depth, 6, 4)
        if n is None:
            raise ConfigError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth!r}"
            )
        check_positive_int("widen_factor", widen_factor)
        check_probability("dropout", dropout)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)

        self.stem = conv3x3(in_channels, 16)
        block = functools.partial(PreActBasicBlock, dropout=dropout)
        self.stages, channels = make_stages(block, (n, n, n), widths, 16, drop_path=drop_path)
        self.head = ClassifierHead(channels, num_classes, pre_act=True)
        init_weights(self, zero_init_residual)
