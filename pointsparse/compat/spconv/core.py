"""spconv 2.x's SparseConvTensor over pointsparse's SparseTensor.

spconv indices are (batch, d0, d1, d2) cell indices of each level, with the level's
``spatial_shape``; pointsparse keeps multiples of the tensor stride on the finest grid. The
tensor carries its stride and its pointsparse cache family, so that indices convert once per level
and submanifold maps are shared by every conv of a level, with or without ``indice_key``.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ... import SparseTensor as NativeTensor
from ...interop import as_torch
from ...kmap import KernelMapCache

Triple = Tuple[int, int, int]


@dataclass
class IndiceData:
    """What a strided conv with an ``indice_key`` records for the ``SparseInverseConv3d`` that
    inverts it (field names as spconv's)."""

    out_indices: Tensor
    indices: Tensor            # the conv's input indices: the inverse conv's output
    spatial_shape: List[int]   # of the input
    out_spatial_shape: List[int]
    ksize: Triple
    stride: Triple
    padding: Triple
    dilation: Triple
    is_subm: bool
    native_stride: Triple      # pointsparse tensor stride of the input
    native_coords: Tensor      # and its coordinates
    cache: KernelMapCache      # and its family, which holds the conv's kernel map


class SparseConvTensor:
    """``features [N, C]`` at ``indices`` int32 ``[N, 4]`` (batch, d0, d1, d2) in a grid of
    ``spatial_shape``; ``batch_size`` items. Features are replaced, not assigned
    (``x = x.replace_feature(f)``), as in spconv."""

    def __init__(self, features, indices, spatial_shape: Union[Sequence[int], np.ndarray], batch_size: int,
                 grid: Optional[Tensor] = None, voxel_num: Optional[Tensor] = None,
                 indice_dict: Optional[Dict[str, IndiceData]] = None, benchmark: bool = False, **_):
        features, indices = as_torch(features), as_torch(indices)
        if features.dim() != 2 or indices.dim() != 2 or indices.shape[1] != 4:
            raise ValueError(f"features must be [N, C] and indices [N, 4] (3-D only here), got "
                             f"{tuple(features.shape)} and {tuple(indices.shape)}")
        if indices.dtype != torch.int32:
            raise TypeError(f"indices must be int32 (spconv's rule), got {indices.dtype}")
        if len(spatial_shape) != 3:
            raise ValueError(f"spatial_shape must have 3 entries, got {list(spatial_shape)}")
        self._features = features
        self.indices = indices
        self.spatial_shape = [int(v) for v in spatial_shape]
        self.batch_size = int(batch_size)
        self.indice_dict = {} if indice_dict is None else indice_dict
        self.grid, self.voxel_num, self.benchmark = grid, voxel_num, benchmark
        self.benchmark_record = {}
        self._stride: Triple = (1, 1, 1)
        self._cache = KernelMapCache()
        self._native_coords: Optional[Tuple[Tensor, Tensor]] = None   # (indices, native coords)

    @property
    def features(self) -> Tensor:
        return self._features

    @features.setter
    def features(self, value) -> None:
        raise ValueError("you can't set feature directly, use 'x = x.replace_feature(your_new_feature)'")

    @property
    def spatial_size(self) -> int:
        return int(np.prod(self.spatial_shape))

    def replace_feature(self, feature: Tensor) -> "SparseConvTensor":
        out = self.shadow_copy()
        out._features = feature
        return out

    def shadow_copy(self) -> "SparseConvTensor":
        out = SparseConvTensor(self._features, self.indices, self.spatial_shape, self.batch_size, self.grid,
                               self.voxel_num, self.indice_dict, self.benchmark)
        out.benchmark_record = self.benchmark_record
        out._stride, out._cache, out._native_coords = self._stride, self._cache, self._native_coords
        return out

    def select_by_index(self, valid_indices: Tensor) -> "SparseConvTensor":
        out = SparseConvTensor(self._features[valid_indices], self.indices[valid_indices], self.spatial_shape,
                               self.batch_size, indice_dict={})
        out._stride = self._stride
        return out

    def minus(self) -> "SparseConvTensor":
        return self.replace_feature(-self._features)

    def find_indice_pair(self, key) -> Optional[IndiceData]:
        return None if key is None else self.indice_dict.get(key)

    def dense(self, channels_first: bool = True) -> Tensor:
        """``[B, C, d0, d1, d2]`` (``channels_first``) or ``[B, d0, d1, d2, C]``."""
        grid = self._features.new_zeros((self.batch_size, *self.spatial_shape, self._features.shape[1]))
        index = self.indices.long()
        grid = grid.index_put((index[:, 0], index[:, 1], index[:, 2], index[:, 3]), self._features)
        return grid.permute(0, 4, 1, 2, 3).contiguous() if channels_first else grid

    @classmethod
    def from_dense(cls, x: Tensor) -> "SparseConvTensor":
        """From a channel-last dense ``[B, d0, d1, d2, C]``: its non-zero cells."""
        sparse = x.to_sparse(x.dim() - 1)
        return cls(sparse.values(), sparse.indices().t().contiguous().int(), x.shape[1:-1], x.shape[0])

    def __add__(self, other) -> "SparseConvTensor":
        return self.replace_feature(self._features + (other.features if isinstance(other, SparseConvTensor) else other))

    __radd__ = __add__

    def __iadd__(self, other) -> "SparseConvTensor":
        self._features = self._features + (other.features if isinstance(other, SparseConvTensor) else other)
        return self

    def to_native(self, cache: Optional[KernelMapCache] = None) -> NativeTensor:
        """The pointsparse tensor (indices times the stride), in ``cache`` or the tensor's family."""
        if self._native_coords is None or self._native_coords[0] is not self.indices:
            coords = self.indices
            if self._stride != (1, 1, 1):
                coords = coords * torch.tensor((1, *self._stride), dtype=torch.int32, device=coords.device)
            self._native_coords = (self.indices, coords.contiguous())
        return NativeTensor(self._features, self._native_coords[1], self._stride,
                            self._cache if cache is None else cache, spatial_range=self.spatial_shape)

    def from_native(self, y: NativeTensor) -> "SparseConvTensor":
        """A tensor of this batch for the pointsparse result ``y``."""
        indices = y.coords
        if y.stride != (1, 1, 1):
            indices = y.coords // torch.tensor((1, *y.stride), dtype=torch.int32, device=y.coords.device)
        shape = list(y.spatial_range) if y.spatial_range is not None else self.spatial_shape
        out = SparseConvTensor(y.feats, indices, shape, self.batch_size, self.grid, self.voxel_num,
                               self.indice_dict, self.benchmark)
        out.benchmark_record = self.benchmark_record
        out._stride, out._cache, out._native_coords = y.stride, y.cache, (indices, y.coords)
        return out

    def __repr__(self) -> str:
        return f"SparseConvTensor[shape={tuple(self._features.shape)}] (pointsparse compat)"
