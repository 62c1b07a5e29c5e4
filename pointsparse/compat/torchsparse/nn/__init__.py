"""``torchsparse.nn``: TorchSparse 2.1's modules over pointsparse.

Parameters keep TorchSparse's names and layouts (``Conv3d.kernel``, flat batch-norm buffers), so
TorchSparse ``state_dict`` s load unchanged; the layout is converted on the fly in each forward.
"""

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import functional, utils
from .functional import conv3d
from .utils import fapply
from ..tensor import SparseTensor, make_ntuple

__all__ = ["BatchNorm", "Conv3d", "GlobalAvgPool", "GlobalMaxPool", "GroupNorm", "InstanceNorm", "LeakyReLU",
           "ReLU", "SiLU", "functional", "utils"]


class Conv3d(nn.Module):
    """``Conv3d(in, out, kernel_size=3, stride=1, padding=0, dilation=1, bias=False, transposed=False,
    generative=False, config=None)``: TorchSparse's signature and semantics (odd submanifold
    kernels centred, ``padding`` for strided convs in the ``"spconv"`` downsample mode)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, dilation: int = 1,
                 bias: bool = False, transposed: bool = False, generative: bool = False,
                 config: Optional[Dict] = None) -> None:
        super().__init__()
        if generative and not transposed:
            raise ValueError("a generative Conv3d must be transposed")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = make_ntuple(kernel_size, 3)
        self.stride = make_ntuple(stride, 3)
        self.dilation = dilation
        pad = make_ntuple(padding, 3)
        self.padding = tuple((k - 1) // 2 if k % 2 == 1 and s == 1 else p
                             for k, s, p in zip(self.kernel_size, self.stride, pad))
        self.transposed, self.generative = transposed, generative
        self._config = config
        self.kernel_volume = math.prod(self.kernel_size)
        if self.kernel_volume > 1 or self.stride != (1, 1, 1):
            self.kernel = nn.Parameter(torch.zeros(self.kernel_volume, in_channels, out_channels))
        else:
            self.kernel = nn.Parameter(torch.zeros(in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1 / math.sqrt((self.out_channels if self.transposed else self.in_channels) * self.kernel_volume)
        self.kernel.data.uniform_(-std, std)
        if self.bias is not None:
            self.bias.data.uniform_(-std, std)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            text += f", stride={self.stride}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        if self.transposed:
            text += ", transposed=True"
        return text + (", generative=True" if self.generative else "")

    def forward(self, input: SparseTensor) -> SparseTensor:
        return conv3d(input, self.kernel, self.kernel_size, bias=self.bias, stride=self.stride, padding=self.padding,
                      dilation=self.dilation, config=self._config, transposed=self.transposed,
                      generative=self.generative, training=self.training)


class _OnFeats:
    def forward(self, input: SparseTensor) -> SparseTensor:
        return fapply(input, super().forward)


class BatchNorm(_OnFeats, nn.BatchNorm1d):
    pass


class InstanceNorm(_OnFeats, nn.InstanceNorm1d):
    pass


class ReLU(_OnFeats, nn.ReLU):
    pass


class LeakyReLU(_OnFeats, nn.LeakyReLU):
    pass


class SiLU(_OnFeats, nn.SiLU):
    pass


class GroupNorm(nn.GroupNorm):
    """Group normalisation over the voxels of each batch item separately."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        batch = input.coords[:, 0]
        out = torch.zeros_like(input.feats)
        for b in torch.unique(batch).tolist():
            rows = batch == b
            item = input.feats[rows].t()[None]                     # [1, C, N_b]
            out[rows] = super().forward(item)[0].t()
        return input.derive(out)


class GlobalAvgPool(nn.Module):
    def forward(self, input: SparseTensor) -> Tensor:
        return functional.global_avg_pool(input)


class GlobalMaxPool(nn.Module):
    def forward(self, input: SparseTensor) -> Tensor:
        return functional.global_max_pool(input)
