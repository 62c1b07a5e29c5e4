"""spconv's 1-, 2- and 3-D convolutions over pointsparse (1-D and 2-D ones as 3-D ones with unit
axes).

``weight`` keeps spconv 2.x's KRSC layout ``[C_out, *kernel_size, C_in]`` (a checkpoint in the older
RSCK layout ``[*kernel_size, C_in, C_out]`` is recognised by shape and converted on load), converted
to pointsparse's ``[K, C_in, C_out]`` in each forward; a kernel of one cell with stride 1 is, as in
spconv, ``features @ weight.view(C_in, C_out)`` at the input's indices. Index axes (d0, d1, d2) run
as pointsparse's (x, y, z). Semantics: ``SubMConv*d`` is submanifold (odd kernels centred, padding ignored);
``SparseConv*d`` outputs every reached cell inside the output's spatial shape
(``OutputRule.REACHED`` with spconv's padding); ``SparseInverseConv*d`` returns to the input of the
``SparseConv*d`` or ``SparseMaxPool*d`` that recorded its ``indice_key``; ``SparseConvTranspose*d``
is the generative transposed conv. 4-D classes exist, so that imports of them succeed, and raise
``NotImplementedError`` when built.
"""

import math
from typing import Optional

import torch
from torch import nn

from ... import dataflows
from ... import functional as NF
from ...config import ConvConfig, Dataflow, OutputRule
from ...convert import to_pointsparse_weight
from ...tensor import SparseTensor as NativeTensor, kernel_map
from .core import IndiceData, SparseConvTensor, check_ndim, pad3
from .modules import SparseModule


VOXEL_COUNT = "max_num_voxels_during_training"  # spconv's buffer name


def geometry3(layer) -> dict:
    """A conv's or pool's kernel size, stride, padding and dilation as pointsparse's 3-D ones (unit
    axes added)."""
    return dict(kernel_size=pad3(layer.kernel_size, 1), stride=pad3(layer.stride, 1),
                padding=pad3(layer.padding, 0), dilation=pad3(layer.dilation, 1))


def ntuple(value, ndim: int, name: str) -> tuple:
    """An int or ``ndim`` ints as an ``ndim``-tuple (spconv's ``expand_nd``)."""
    value = (value,) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"{name} must be an int or {ndim} ints, got {value}")
    return value


class SparseConvolution(SparseModule):
    """spconv's signature: ``(in, out, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
    bias=True, indice_key=None, algo=None, ...)``; unsupported choices raise."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, subm: bool = False, output_padding=0,
                 transposed: bool = False, inverse: bool = False, indice_key: Optional[str] = None,
                 algo=None, fp32_accum=None, record_voxel_count: bool = False, name=None, **_):
        super().__init__(name=name)
        check_ndim(ndim, type(self).__name__)
        if groups != 1:
            raise NotImplementedError("grouped sparse convolutions are not supported (nor are they in spconv)")
        self.ndim, self.in_channels, self.out_channels = ndim, in_channels, out_channels
        self.kernel_size, self.stride = ntuple(kernel_size, ndim, "kernel_size"), ntuple(stride, ndim, "stride")
        self.padding, self.dilation = ntuple(padding, ndim, "padding"), ntuple(dilation, ndim, "dilation")
        self.output_padding = ntuple(output_padding, ndim, "output_padding")
        if transposed and any(self.output_padding):
            raise NotImplementedError("output_padding of SparseConvTranspose is not supported")
        if subm and any(k % 2 == 0 for k in self.kernel_size):
            raise NotImplementedError("submanifold convs with even kernel sizes anchor differently in spconv; "
                                      "not supported")
        if inverse and indice_key is None:
            raise ValueError("SparseInverseConv needs the indice_key of the conv it inverts")
        self.groups, self.subm, self.transposed, self.inverse = groups, subm, transposed, inverse
        self.indice_key, self.algo, self.fp32_accum = indice_key, algo, fp32_accum
        # spconv's shortcut: one kernel cell and stride 1 is a matrix product at the input's indices.
        self.conv1x1 = math.prod(self.kernel_size) == 1 and (subm or math.prod(self.stride) == 1)
        if self.conv1x1 and not subm and any(self.padding):
            raise ValueError("padding must be zero for 1x1 conv (k=1,s=1)")
        register_voxel_count(self, record_voxel_count and not subm and not inverse)
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
            state_dict[key] = state_dict[key].movedim(-1, 0).contiguous()   # RSCK -> KRSC
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={list(self.kernel_size)}, stride={list(self.stride)}"
        if any(self.padding):
            text += f", padding={list(self.padding)}"
        if self.dilation != (1, 1, 1):
            text += f", dilation={list(self.dilation)}"
        return text + (", bias=False" if self.bias is None else "")

    def native_weight(self):
        """``weight`` as pointsparse's ``[K, C_in, C_out]`` for the 3-D kernel."""
        k3 = pad3(self.kernel_size, 1)
        grid = self.weight.reshape(self.out_channels, *k3, self.in_channels)
        return to_pointsparse_weight(grid, "spconv", k3)

    def forward(self, input: SparseConvTensor) -> SparseConvTensor:
        if not isinstance(input, SparseConvTensor):
            raise TypeError(f"{type(self).__name__} expects a SparseConvTensor, got {type(input).__name__}")
        if input.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} takes {self.ndim}-D tensors, got a {input.ndim}-D one")
        if self.conv1x1:
            features = input.features @ self.weight.reshape(self.in_channels, self.out_channels)
            return input.replace_feature(features if self.bias is None else features + self.bias)
        weight = self.native_weight()
        geometry = geometry3(self)
        if self.inverse:
            return self._inverse(input, weight, geometry)
        if self.transposed:
            x = input.to_native_rebased(geometry["stride"])
        else:
            x = input.to_native()
        if self.subm:
            rule = dict(stride=1)
        elif self.transposed:
            rule = dict(stride=geometry["stride"], transposed=True, generative=True, padding=geometry["padding"])
        else:
            rule = dict(stride=geometry["stride"], outputs=OutputRule.REACHED, padding=geometry["padding"])
        y = NF.conv3d(x, weight, kernel_size=geometry["kernel_size"], bias=self.bias, dilation=geometry["dilation"],
                      **rule)
        out = input.from_native(y)
        if self.indice_key is not None and not self.subm and not self.transposed:
            record_indices(self.indice_key, input, out, x, geometry)
        update_voxel_count(self, out)
        return out

    def _inverse(self, input: SparseConvTensor, weight, geometry: dict) -> SparseConvTensor:
        """The pairs of the recorded layer's map, swapped: outputs at its input's indices, in their
        order (spconv's inverse conv), whatever else the families hold at either stride."""
        record = input.find_indice_pair(self.indice_key)
        if record is None:
            raise ValueError(f"{type(self).__name__}: no conv recorded indice_key {self.indice_key!r} on this tensor")
        if record.ksize != geometry["kernel_size"]:
            raise ValueError(f"{type(self).__name__} kernel {self.kernel_size} differs from the kernel "
                             f"{record.ksize[:self.ndim]} of the layer it inverts ({self.indice_key!r})")
        if input.indices.shape[0] != record.kmap.num_out:
            raise ValueError(f"{type(self).__name__}: the input has {input.indices.shape[0]} rows but the layer of "
                             f"indice_key {self.indice_key!r} output {record.kmap.num_out}")
        fine_range = pad3(record.spatial_shape, 1)
        swapped = record.kmap.memo(("inverse", fine_range), lambda: record.kmap.transposed(
            record.native_coords, record.native_stride, fine_range))
        spec = dataflows.resolve(Dataflow.AUTO, input.features.device, input.features.dtype)
        feats = spec.run(input.features, weight, swapped, -1, ConvConfig())          # [N_fine, C_out]
        if self.bias is not None:
            feats = feats + self.bias.to(feats.dtype)
        y = NativeTensor._derive(feats, record.native_coords, record.native_stride, record.cache, fine_range)
        out = input.from_native(y)
        out.indices = record.indices
        out._native_coords = (record.indices, record.indices._version, y.coords)
        return out


def record_indices(key: str, input: SparseConvTensor, out: SparseConvTensor, x, geometry: dict) -> None:
    """What a strided conv or pool with an ``indice_key`` leaves for the inverse conv of that key
    (its map: a cache hit, built by the layer just run)."""
    kmap = kernel_map(x, geometry["kernel_size"], geometry["stride"], geometry["dilation"],
                      outputs=OutputRule.REACHED, padding=geometry["padding"])
    input.indice_dict[key] = IndiceData(
        out.indices, input.indices, input.spatial_shape, out.spatial_shape, geometry["kernel_size"],
        geometry["stride"], geometry["padding"], geometry["dilation"], False, x.stride, x.coords, x.cache, kmap)


def register_voxel_count(module: nn.Module, record: bool) -> None:
    """spconv's ``record_voxel_count``: a buffer with the most outputs the layer has made (its
    checkpoints carry it)."""
    if record:
        module.register_buffer(VOXEL_COUNT, torch.zeros(1, dtype=torch.int32))


def update_voxel_count(module: nn.Module, out: SparseConvTensor) -> None:
    count = getattr(module, VOXEL_COUNT, None)
    if count is not None:
        count.clamp_(min=out.indices.shape[0])


def _conv_class(name: str, ndim: int, **kind):
    """spconv's ``name`` (``SubMConv2d``, ...): its constructor signature over SparseConvolution."""
    if kind.get("inverse"):
        def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, algo=None,
                     fp32_accum=None, name=None, **kwargs):
            SparseConvolution.__init__(self, ndim, in_channels, out_channels, kernel_size, bias=bias,
                                       indice_key=indice_key, algo=algo, fp32_accum=fp32_accum, name=name,
                                       **kind, **kwargs)
    else:
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, indice_key=None, algo=None, fp32_accum=None, name=None, **kwargs):
            SparseConvolution.__init__(self, ndim, in_channels, out_channels, kernel_size, stride, padding,
                                       dilation, groups, bias, indice_key=indice_key, algo=algo,
                                       fp32_accum=fp32_accum, name=name, **kind, **kwargs)
    return type(name, (SparseConvolution,), {"__init__": __init__, "__module__": __name__,
                                             "__qualname__": name})


SubMConv1d, SubMConv2d, SubMConv3d, SubMConv4d = (_conv_class(f"SubMConv{n}d", n, subm=True) for n in (1, 2, 3, 4))
SparseConv1d, SparseConv2d, SparseConv3d, SparseConv4d = (_conv_class(f"SparseConv{n}d", n) for n in (1, 2, 3, 4))
SparseConvTranspose1d, SparseConvTranspose2d, SparseConvTranspose3d, SparseConvTranspose4d = (
    _conv_class(f"SparseConvTranspose{n}d", n, transposed=True) for n in (1, 2, 3, 4))
SparseInverseConv1d, SparseInverseConv2d, SparseInverseConv3d, SparseInverseConv4d = (
    _conv_class(f"SparseInverseConv{n}d", n, inverse=True) for n in (1, 2, 3, 4))
