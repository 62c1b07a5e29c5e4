"""MinkUNet18 / MinkUNet34 for LiDAR segmentation, built only from pointsparse.nn.

Layout of SPVNAS's MinkUNet: a two-conv stem, four encoder stages (k2 s2 down-sampling conv, then
residual blocks), four decoder stages (k2 s2 transposed conv, concatenation with the encoder skip,
residual blocks) and a linear head. Widths (32, 32, 64, 128, 256, 256, 128, 96, 96) are scaled by
``cr``; MinkUNet18 has (2, 2, 2, 2) encoder blocks, MinkUNet34 (2, 3, 4, 6); decoders have 2 each.
"""

from typing import Mapping, Sequence, Union

from torch import nn

from pointsparse import functional as F
from pointsparse.config import ConvConfig
from pointsparse import nn as spnn
from pointsparse.tensor import SparseTensor

WIDTHS = (32, 32, 64, 128, 256, 256, 128, 96, 96)


class ConvBNReLU(nn.Sequential):
    """Conv, then batch norm with a fused ReLU (the state-dict keys of conv, BN, ReLU: the ReLU has
    none); in eval mode the norm and ReLU run inside the conv (:func:`spnn.conv_norm`)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, transposed: bool = False):
        super().__init__(spnn.SparseConv3d(c_in, c_out, kernel_size, stride, transposed=transposed),
                         spnn.BatchNormReLU(c_out))

    def forward(self, x: SparseTensor) -> SparseTensor:
        conv, norm = self
        return spnn.conv_norm(conv, norm, x)


class ResidualBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus a shortcut (k1 conv + BN when channels change), then ReLU; the last
    batch norm, the addition and the ReLU run as one (:meth:`spnn.BatchNorm.add_relu`), in eval mode
    inside the last conv (:func:`spnn.conv_norm`)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(c_in, c_out), spnn.SparseConv3d(c_out, c_out, 3), spnn.BatchNorm(c_out))
        self.shortcut = (nn.Identity() if c_in == c_out else
                         nn.Sequential(spnn.SparseConv3d(c_in, c_out, 1), spnn.BatchNorm(c_out)))

    def forward(self, x: SparseTensor) -> SparseTensor:
        first, conv, norm = self.body
        shortcut = x if isinstance(self.shortcut, nn.Identity) else spnn.conv_norm(*self.shortcut, x)
        return spnn.conv_norm(conv, norm, first(x), residual=shortcut)


def residual_stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks)])


class UpStage(nn.Module):
    """Transposed k2 s2 conv back to the skip's coordinates, concatenation, residual blocks."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, blocks: int):
        super().__init__()
        self.up = ConvBNReLU(c_in, c_out, 2, 2, transposed=True)
        self.blocks = residual_stage(c_out + c_skip, c_out, blocks)

    def forward(self, x: SparseTensor, skip: SparseTensor) -> SparseTensor:
        return self.blocks(F.cat([self.up(x), skip]))


class MinkUNet(nn.Module):
    def __init__(self, num_classes: int = 19, in_channels: int = 4, cr: float = 1.0,
                 encoder_blocks: Sequence[int] = (2, 2, 2, 2), decoder_blocks: Sequence[int] = (2, 2, 2, 2),
                 config: Union[ConvConfig, Mapping[str, ConvConfig], None] = None):
        """``config``: one ConvConfig for every conv layer, or a map of module names (as
        ``named_modules`` gives them, e.g. ``"down.0.0.0"``) to configs."""
        super().__init__()
        cs = [max(1, int(cr * c)) for c in WIDTHS]
        self.stem = nn.Sequential(ConvBNReLU(in_channels, cs[0]), ConvBNReLU(cs[0], cs[0]))
        self.down = nn.ModuleList(
            nn.Sequential(ConvBNReLU(cs[i], cs[i], 2, 2), residual_stage(cs[i], cs[i + 1], encoder_blocks[i]))
            for i in range(4))
        self.up = nn.ModuleList(
            UpStage(cs[4 + i], cs[3 - i], cs[5 + i], decoder_blocks[i]) for i in range(4))
        self.head = spnn.Linear(cs[8], num_classes)  # nn.Linear, through the fused kernels on the CPU
        spnn.set_conv_configs(self, config)

    def forward(self, x: SparseTensor):
        """Logits [N, num_classes] at the input voxels."""
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for stage in self.up:
            y = stage(y, skips.pop())
        return self.head(y.feats)


def minkunet18(**kwargs) -> MinkUNet:
    return MinkUNet(encoder_blocks=(2, 2, 2, 2), **kwargs)


def minkunet34(**kwargs) -> MinkUNet:
    return MinkUNet(encoder_blocks=(2, 3, 4, 6), **kwargs)
