"""spconv 2.x as a baseline: its input tensor, and MinkUNet built from its modules, layer for layer
the architecture of ``models.MinkUNet`` (for ``python -m pointsparse.bench minkunet``).

The benchmarks' baseline. spconv is an optional dependency
(``pip install spconv``: its CPU package); nothing here imports it at module load.

Correspondence: submanifold k3 -> ``SubMConv3d`` (one ``indice_key`` per tensor stride, so the map
is built once per level as ours is), k1 shortcut -> ``SubMConv3d(k=1)``, k2 s2 down -> ``SparseConv3d``,
k2 s2 transposed -> ``SparseInverseConv3d`` on the down conv's key (outputs at the finer tensor's
coordinates, in its row order, as ours does), BatchNorm1d and ReLU on the features, concatenation
and residual additions through ``replace_feature``. No bias in the convs, as ours.

Two things the CPU package needs, both handled here: its backward asks for a CUDA stream
(``spconv.pytorch.ops.get_current_stream`` is replaced by ``lambda: 0``), and its scatter-add races at
more than one thread (outputs then differ slightly from run to run: report it, timing is unaffected).
"""

from typing import Sequence

import torch
from torch import Tensor, nn

from ..extras import extra_unavailable_reason, import_extra
from ..models.minkunet import WIDTHS


def import_spconv():
    spconv = import_extra("spconv", "The spconv baseline")
    import spconv.pytorch.ops as spconv_ops

    spconv_ops.get_current_stream = lambda: 0  # its CPU backward asks for a CUDA stream otherwise
    return spconv


def spconv_available() -> bool:
    return extra_unavailable_reason("spconv", "The spconv baseline") is None


class _BNReLU(nn.Module):
    """On features: SparseSequential hands non-spconv modules ``features [N, C]``."""

    def __init__(self, channels: int, relu: bool = True):
        super().__init__()
        self.bn, self.relu = nn.BatchNorm1d(channels), relu

    def forward(self, feats: Tensor) -> Tensor:
        y = self.bn(feats)
        return torch.relu_(y) if self.relu else y


def _conv_bn_relu(c_in: int, c_out: int, kind: str, key: str) -> nn.Module:
    spconv = import_spconv()
    native = spconv.ConvAlgo.Native
    if kind == "subm3":
        conv = spconv.SubMConv3d(c_in, c_out, 3, bias=False, indice_key=key, algo=native)
    elif kind == "down":
        conv = spconv.SparseConv3d(c_in, c_out, 2, 2, bias=False, indice_key=key, algo=native)
    else:  # "up": the inverse of the down conv that made this level
        conv = spconv.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=key, algo=native)
    return spconv.SparseSequential(conv, _BNReLU(c_out))


class _Residual(nn.Module):
    def __init__(self, c_in: int, c_out: int, level: int):
        super().__init__()
        spconv, key = import_spconv(), f"subm{level}"
        self.body = spconv.SparseSequential(
            _conv_bn_relu(c_in, c_out, "subm3", key),
            spconv.SubMConv3d(c_out, c_out, 3, bias=False, indice_key=key, algo=spconv.ConvAlgo.Native),
            _BNReLU(c_out, relu=False))
        self.shortcut = None if c_in == c_out else spconv.SparseSequential(
            spconv.SubMConv3d(c_in, c_out, 1, bias=False, indice_key=f"k1_{level}", algo=spconv.ConvAlgo.Native),
            _BNReLU(c_out, relu=False))

    def forward(self, x):
        y = self.body(x)
        skip = x.features if self.shortcut is None else self.shortcut(x).features
        return y.replace_feature(torch.relu_(y.features + skip))


def _stage(c_in: int, c_out: int, blocks: int, level: int) -> nn.Module:
    # nn.Sequential: SparseSequential would hand a non-spconv module only the features.
    return nn.Sequential(*[_Residual(c_in if i == 0 else c_out, c_out, level) for i in range(blocks)])


class SpconvMinkUNet(nn.Module):
    def __init__(self, num_classes: int = 19, in_channels: int = 4, cr: float = 1.0,
                 encoder_blocks: Sequence[int] = (2, 2, 2, 2), decoder_blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        cs = [max(1, int(cr * c)) for c in WIDTHS]
        self.stem = nn.Sequential(_conv_bn_relu(in_channels, cs[0], "subm3", "subm0"),
                                            _conv_bn_relu(cs[0], cs[0], "subm3", "subm0"))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(cs[i], cs[i], "down", f"down{i}"),
                                    _stage(cs[i], cs[i + 1], encoder_blocks[i], i + 1))
            for i in range(4))
        self.up = nn.ModuleList(_conv_bn_relu(cs[4 + i], cs[5 + i], "up", f"down{3 - i}") for i in range(4))
        self.up_blocks = nn.ModuleList(
            _stage(cs[5 + i] + cs[3 - i], cs[5 + i], decoder_blocks[i], 3 - i) for i in range(4))
        self.head = nn.Linear(cs[8], num_classes)

    def forward(self, x) -> Tensor:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for up, blocks in zip(self.up, self.up_blocks):
            skip = skips.pop()
            y = up(y)
            y = blocks(y.replace_feature(torch.cat([y.features, skip.features], 1)))
        return self.head(y.features)


def spconv_input(coords: Tensor, feats: Tensor, batch_size: int = 1):
    """A SparseConvTensor of int32 ``coords [N, 4]`` (batch, x, y, z) shifted to non-negative indices
    by an even amount, so that spconv's stride-2 cells are ours."""
    spconv = import_spconv()
    shifted = coords.clone()
    shifted[:, 1:] -= torch.div(shifted[:, 1:].min(0).values, 2, rounding_mode="floor") * 2
    shape = (shifted[:, 1:].max(0).values + 1).tolist()
    return spconv.SparseConvTensor(feats, shifted, shape, batch_size)
