"""ResNeXt-29 for CIFAR (Xie et al. 2017, "Aggregated Residual Transformations", arXiv 1611.05431).

A 64-channel 3x3 stem, then 3 stages of 3 bottleneck blocks (3 convs each: 9 x 3 + stem + classifier = 29 layers).
Each block is 1x1 reduce -> grouped 3x3 with `cardinality` groups -> 1x1 expand, every conv followed by BN, ReLU after
the addition, 1x1 projection shortcuts where the shape changes: resnet's Bottleneck with groups. In Xie's "C x d"
notation, C is the cardinality and d the channels per group in the first stage; the grouped width C*d doubles at each
stage.

The generic form takes the first stage's grouped width ``width`` = C*d, as the seed notebook's
``ResNeXtCIFAR(cardinality, width)`` did:

- ResNeXt-29 8x64d of the paper: ``ResNeXt(cardinality=8, width=512)``, grouped widths 512/1024/2048, stage outputs
  256/512/1024, 34.4M parameters; 16x64d is ``ResNeXt(cardinality=16, width=1024)``, 68.1M.
- The seed notebook's ``ResNeXtCIFAR(cardinality=8, width=64)`` has grouped widths 64/128/256 and outputs 64/128/256,
  i.e. 8 groups of 8 channels: ``ResNeXt(cardinality=8, width=64, out_channels=(64, 128, 256))``. That is 8x8d in
  Xie's notation, not 8x64d: 0.82M parameters against 34.4M. Its config is ``resnext29_8x8d_small``.
"""

from __future__ import annotations

from cifarbench.errors import ConfigError

from .layers import (
    ClassifierHead,
    StagedNet,
    blocks_for_depth,
    check_int_sequence,
    check_positive_int,
    conv_bn_act,
    init_weights,
    make_stages,
)
from .resnet import Bottleneck


class ResNeXt(StagedNet):
    """Generic CIFAR ResNeXt.

    Args:
        depth: 9n+2 (n blocks per stage; 29 for n=3).
        cardinality: C, the number of groups of the 3x3 convs.
        width: channels of the first stage's grouped 3x3 conv, C*d (doubles each stage); a multiple of cardinality.
        out_channels: output channels of the three stages (256/512/1024 in the paper).
        stem_width: channels of the 3x3 stem conv (64).
        drop_path: stochastic-depth rate of the last block, linearly less for earlier ones.
        zero_init_residual: start every residual branch at zero (its last BN weight = 0).
    """

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 8,
        width: int = 512,
        *,
        out_channels=(256, 512, 1024),
        stem_width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        n = blocks_for_depth(depth, 9, 2)
        if n is None:
            raise ConfigError(f"ResNeXt depth must be 9n+2 with n >= 1 (11, 20, 29, 38, ...), got {depth!r}")
        check_positive_int("cardinality", cardinality)
        check_positive_int("width", width)
        if width % cardinality:
            raise ConfigError(
                f"ResNeXt width must be a multiple of cardinality (width = cardinality x channels per group), "
                f"got width={width} and cardinality={cardinality}"
            )
        out_channels = check_int_sequence("out_channels", out_channels, length=3)
        check_positive_int("stem_width", stem_width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        # Each stage's spec is (grouped width, output channels): unlike ResNet's 4x expansion, both are free here.
        specs = [(width * 2**stage, out) for stage, out in enumerate(out_channels)]

        def block(in_channels: int, spec: tuple[int, int], stride: int, drop_path: float) -> Bottleneck:
            group_width, out = spec
            return Bottleneck(in_channels, group_width, stride, drop_path=drop_path, groups=cardinality,
                              out_channels=out)

        self.stem = conv_bn_act(in_channels, stem_width)
        self.stages, channels = make_stages(block, (n, n, n), specs, stem_width, drop_path=drop_path)
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self, zero_init_residual)
