"""spconv's max pooling (``SparseMaxPool1d``-``3d``) and global pools over pointsparse.

Outputs and spatial shapes follow spconv's strided conv (every reached cell, with padding and
dilation); each output is ``max(0, inputs)`` per channel, as in spconv, whose pooled values start
from zero. The gradient goes to the arg-max input row (spconv gives it to every input equal to the
maximum; they differ only on exact ties). An ``indice_key`` records the pool for a
``SparseInverseConv`` of that key. ``subm=True`` (base class only) pools in place.
"""

from typing import Optional

from torch import Tensor

from ... import functional as NF
from ...config import OutputRule
from .conv import geometry3, ntuple, record_indices, register_voxel_count, update_voxel_count
from .core import SparseConvTensor, check_ndim
from .modules import SparseModule


class SparseMaxPool(SparseModule):
    """spconv's signature: ``(ndim, kernel_size=3, stride=1, padding=0, dilation=1, indice_key=None,
    subm=False, algo=None, record_voxel_count=False, name=None)``; ``stride=None``: the kernel size."""

    def __init__(self, ndim: int, kernel_size=3, stride=1, padding=0, dilation=1, indice_key: Optional[str] = None,
                 subm: bool = False, algo=None, record_voxel_count: bool = False, name=None):
        super().__init__(name=name)
        check_ndim(ndim, type(self).__name__)
        self.ndim = ndim
        self.kernel_size = ntuple(kernel_size, ndim, "kernel_size")
        self.stride = self.kernel_size if stride is None else ntuple(stride, ndim, "stride")
        self.padding, self.dilation = ntuple(padding, ndim, "padding"), ntuple(dilation, ndim, "dilation")
        self.indice_key, self.subm, self.algo = indice_key, subm, algo
        register_voxel_count(self, record_voxel_count and not subm)

    def forward(self, input: SparseConvTensor) -> SparseConvTensor:
        if not isinstance(input, SparseConvTensor) or input.ndim != self.ndim:
            raise TypeError(f"{type(self).__name__} expects a {self.ndim}-D SparseConvTensor")
        if self.indice_key is not None and self.indice_key in input.indice_dict:
            raise ValueError(f"indice key {self.indice_key} exists")
        geometry = geometry3(self)
        x = input.to_native()
        if self.subm:
            y = NF.max_pool3d(x, geometry["kernel_size"], 1, geometry["dilation"], initial=0.0)
        else:
            y = NF.max_pool3d(x, geometry["kernel_size"], geometry["stride"], geometry["dilation"],
                              outputs=OutputRule.REACHED, padding=geometry["padding"], initial=0.0)
        out = input.from_native(y)
        if self.indice_key is not None and not self.subm:
            record_indices(self.indice_key, input, out, x, geometry)
        if not self.subm:
            update_voxel_count(self, out)
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={list(self.kernel_size)}, stride={list(self.stride)}, padding={list(self.padding)}"


def _pool_class(ndim: int):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None, algo=None,
                 record_voxel_count=False, name=None):
        SparseMaxPool.__init__(self, ndim, kernel_size, stride, padding, dilation, indice_key, algo=algo,
                               record_voxel_count=record_voxel_count, name=name)
    name = f"SparseMaxPool{ndim}d"
    return type(name, (SparseMaxPool,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


SparseMaxPool1d, SparseMaxPool2d, SparseMaxPool3d, SparseMaxPool4d = (_pool_class(n) for n in (1, 2, 3, 4))


class _GlobalPool(SparseModule):
    reduce = "amax"

    def forward(self, input: SparseConvTensor) -> Tensor:
        """``[batch_size, C]``: per batch item, over its features (0 for an empty item)."""
        batch = input.indices[:, 0].long()[:, None].expand_as(input.features)
        out = input.features.new_zeros((input.batch_size, input.features.shape[1]))
        return out.scatter_reduce(0, batch, input.features, self.reduce, include_self=False)


class SparseGlobalMaxPool(_GlobalPool):
    reduce = "amax"


class SparseGlobalAvgPool(_GlobalPool):
    """The mean per batch item (spconv 2.3.8's returns one value per item, not ``[B, C]``)."""

    reduce = "mean"
