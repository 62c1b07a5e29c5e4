"""spconv's 3-D convolutions over pointsparse.

``weight`` keeps spconv 2.x's KRSC layout ``[C_out, k0, k1, k2, C_in]`` (a checkpoint in the older
RSCK layout ``[k0, k1, k2, C_in, C_out]`` is recognised by shape and converted on load), converted
to pointsparse's ``[K, C_in, C_out]`` in each forward. Index axes (d0, d1, d2) run as pointsparse's
(x, y, z). Semantics: ``SubMConv3d`` is submanifold (odd kernels centred, padding ignored);
``SparseConv3d`` outputs every reached cell inside the output's spatial shape
(``OutputRule.REACHED`` with spconv's padding); ``SparseInverseConv3d`` returns to the input of the
``SparseConv3d`` that recorded its ``indice_key``; ``SparseConvTranspose3d`` is the generative
transposed conv.
"""

import math
from typing import Optional

import torch
from torch import nn

from ... import functional as NF
from ...config import OutputRule
from ...convert import to_pointsparse_weight
from .core import IndiceData, SparseConvTensor
from .modules import SparseModule


def _triple(value, name):
    value = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {value}")
    return value


class SparseConvolution(SparseModule):
    """spconv's signature: ``(in, out, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
    bias=True, indice_key=None, algo=None, ...)``; unsupported choices raise."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, subm: bool = False, output_padding=0,
                 transposed: bool = False, inverse: bool = False, indice_key: Optional[str] = None,
                 algo=None, fp32_accum=None, name=None, **_):
        super().__init__(name=name)
        if ndim != 3:
            raise NotImplementedError(f"pointsparse runs 3-D sparse convolutions; got ndim={ndim}")
        if groups != 1:
            raise NotImplementedError("grouped sparse convolutions are not supported (nor are they in spconv)")
        self.ndim, self.in_channels, self.out_channels = ndim, in_channels, out_channels
        self.kernel_size, self.stride = _triple(kernel_size, "kernel_size"), _triple(stride, "stride")
        self.padding, self.dilation = _triple(padding, "padding"), _triple(dilation, "dilation")
        self.output_padding = _triple(output_padding, "output_padding")
        if transposed and any(self.output_padding):
            raise NotImplementedError("output_padding of SparseConvTranspose3d is not supported")
        if subm and any(k % 2 == 0 for k in self.kernel_size):
            raise NotImplementedError("submanifold convs with even kernel sizes anchor differently in spconv; "
                                      "not supported")
        if inverse and indice_key is None:
            raise ValueError("SparseInverseConv3d needs the indice_key of the conv it inverts")
        self.groups, self.subm, self.transposed, self.inverse = groups, subm, transposed, inverse
        self.indice_key, self.algo, self.fp32_accum = indice_key, algo, fp32_accum
        self.conv1x1 = math.prod(self.kernel_size) == 1 and (subm or self.stride == (1, 1, 1))
        self.weight = nn.Parameter(torch.zeros(out_channels, *self.kernel_size, in_channels))   # KRSC
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch's kaiming-uniform default for conv weights, fan-in C_in * K as spconv computes it.
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        rsck = (*self.kernel_size, self.in_channels, self.out_channels)
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.weight.shape) \
                and tuple(state_dict[key].shape) == rsck:
            state_dict[key] = state_dict[key].permute(4, 0, 1, 2, 3).contiguous()   # RSCK -> KRSC
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={list(self.kernel_size)}, stride={list(self.stride)}"
        if any(self.padding):
            text += f", padding={list(self.padding)}"
        if self.dilation != (1, 1, 1):
            text += f", dilation={list(self.dilation)}"
        return text + (", bias=False" if self.bias is None else "")

    def forward(self, input: SparseConvTensor) -> SparseConvTensor:
        if not isinstance(input, SparseConvTensor):
            raise TypeError(f"{type(self).__name__} expects a SparseConvTensor, got {type(input).__name__}")
        weight = to_pointsparse_weight(self.weight, "spconv", self.kernel_size)
        if self.inverse:
            return self._inverse(input, weight)
        x = input.to_native()
        if self.subm:
            rule = dict(stride=1)
        elif self.transposed:
            rule = dict(stride=self.stride, transposed=True, generative=True, padding=self.padding)
        else:
            rule = dict(stride=self.stride, outputs=OutputRule.REACHED, padding=self.padding)
        y = NF.conv3d(x, weight, kernel_size=self.kernel_size, bias=self.bias, dilation=self.dilation, **rule)
        out = input.from_native(y)
        if self.indice_key is not None and not self.subm and not self.transposed:
            input.indice_dict[self.indice_key] = IndiceData(
                out.indices, input.indices, input.spatial_shape, out.spatial_shape, self.kernel_size, self.stride,
                self.padding, self.dilation, False, x.stride, x.coords, x.cache)
        return out

    def _inverse(self, input: SparseConvTensor, weight) -> SparseConvTensor:
        record = input.find_indice_pair(self.indice_key)
        if record is None:
            raise ValueError(f"SparseInverseConv3d: no conv recorded indice_key {self.indice_key!r} on this tensor")
        if record.ksize != self.kernel_size:
            raise ValueError(f"SparseInverseConv3d kernel {self.kernel_size} differs from the kernel "
                             f"{record.ksize} of the conv it inverts ({self.indice_key!r})")
        x = input.to_native(cache=record.cache)
        y = NF.conv3d(x, weight, kernel_size=record.ksize, bias=self.bias, stride=record.stride,
                      dilation=record.dilation, transposed=True, outputs=OutputRule.REACHED, padding=record.padding)
        out = input.from_native(y)
        out.indices, out._native_coords = record.indices, (record.indices, y.coords)
        return out


class SubMConv3d(SparseConvolution):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, indice_key=None, algo=None, fp32_accum=None, name=None, **kwargs):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         subm=True, indice_key=indice_key, algo=algo, fp32_accum=fp32_accum, name=name, **kwargs)


class SparseConv3d(SparseConvolution):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, indice_key=None, algo=None, fp32_accum=None, name=None, **kwargs):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         indice_key=indice_key, algo=algo, fp32_accum=fp32_accum, name=name, **kwargs)


class SparseConvTranspose3d(SparseConvolution):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, indice_key=None, algo=None, fp32_accum=None, name=None, **kwargs):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         transposed=True, indice_key=indice_key, algo=algo, fp32_accum=fp32_accum, name=name,
                         **kwargs)


class SparseInverseConv3d(SparseConvolution):
    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, algo=None, fp32_accum=None,
                 name=None, **kwargs):
        super().__init__(3, in_channels, out_channels, kernel_size, bias=bias, inverse=True, indice_key=indice_key,
                         algo=algo, fp32_accum=fp32_accum, name=name, **kwargs)
