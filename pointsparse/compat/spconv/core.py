"""spconv 2.x's SparseConvTensor over pointsparse's SparseTensor, in 1, 2 or 3 dimensions.

spconv indices are (batch, d0, .., d_{n-1}) cell indices of each level, with the level's
``spatial_shape``; pointsparse keeps multiples of the tensor stride on the finest 3-D grid (1-D and
2-D tensors fill the missing axes with 0 and stride 1). The tensor carries its stride and its
pointsparse cache family, so that indices convert once per level and submanifold maps are shared by
every conv of a level, with or without ``indice_key``. ``indices`` may be replaced or changed in
place (detection code does): the next conv converts them afresh, in a family of their own.
"""

import enum
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ... import SparseTensor as NativeTensor
from ...interop import as_torch
from ...kmap import KernelMap, KernelMapCache

Triple = Tuple[int, int, int]
NDIMS = (1, 2, 3)  # spconv's 4-D tensors have no pointsparse counterpart


class ConvAlgo(enum.Enum):
    """spconv's kernel choice; accepted and ignored (pointsparse.ConvConfig picks kernels)."""

    Native = 0
    MaskImplicitGemm = 1
    MaskSplitImplicitGemm = 2


class AlgoHint(enum.Enum):
    NoHint = 0b000
    Fowrard = 0b001  # sic, spconv's name
    BackwardInput = 0b010
    BackwardWeight = 0b100


def check_ndim(ndim: int, what: str) -> None:
    if ndim not in NDIMS:
        raise NotImplementedError(f"{what}: pointsparse runs 1-, 2- and 3-D sparse tensors (as 3-D ones with unit "
                                  f"axes); {ndim}-D is not provided")


def pad3(values: Sequence[int], fill: int) -> Triple:
    """An n-D geometry (n <= 3) as pointsparse's 3-D one, the missing axes at ``fill``."""
    return tuple(int(v) for v in values) + (fill,) * (3 - len(values))


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
    cache: KernelMapCache      # and its family
    kmap: KernelMap            # the conv's (or pool's) map: the inverse runs its pairs swapped


class SparseConvTensor:
    """``features [N, C]`` at ``indices`` int32 ``[N, 4]`` (batch, d0, d1, d2) in a grid of
    ``spatial_shape``; ``batch_size`` items. Features are replaced, not assigned
    (``x = x.replace_feature(f)``), as in spconv."""

    def __init__(self, features, indices, spatial_shape: Union[Sequence[int], np.ndarray], batch_size: int,
                 grid: Optional[Tensor] = None, voxel_num: Optional[Tensor] = None,
                 indice_dict: Optional[Dict[str, IndiceData]] = None, benchmark: bool = False, **_):
        features, indices = as_torch(features), as_torch(indices)
        if features.dim() != 2 or indices.dim() != 2:
            raise ValueError(f"features must be [N, C] and indices [N, ndim + 1], got {tuple(features.shape)} and "
                             f"{tuple(indices.shape)}")
        check_ndim(indices.shape[1] - 1, "SparseConvTensor")
        if indices.dtype != torch.int32:
            raise TypeError(f"indices must be int32 (spconv's rule), got {indices.dtype}")
        if len(spatial_shape) != indices.shape[1] - 1:
            raise ValueError(f"spatial_shape must have {indices.shape[1] - 1} entries for indices "
                             f"{tuple(indices.shape)}, got {list(spatial_shape)}")
        self._features = features
        self.indices = indices
        self.spatial_shape = [int(v) for v in spatial_shape]
        self.batch_size = int(batch_size)
        self.indice_dict = {} if indice_dict is None else indice_dict
        self.grid, self.voxel_num, self.benchmark = grid, voxel_num, benchmark
        self.benchmark_record = {}
        self._stride: Triple = (1, 1, 1)
        self._cache = KernelMapCache()
        # (indices, their version, native coords): recomputed when indices are replaced or changed.
        self._native_coords: Optional[Tuple[Tensor, int, Tensor]] = None

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

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
        """``[B, C, *spatial_shape]`` (``channels_first``) or ``[B, *spatial_shape, C]``."""
        grid = self._features.new_zeros((self.batch_size, *self.spatial_shape, self._features.shape[1]))
        index = self.indices.long()
        grid = grid.index_put(tuple(index.t()), self._features)
        return grid.movedim(-1, 1).contiguous() if channels_first else grid

    @classmethod
    def from_dense(cls, x: Tensor) -> "SparseConvTensor":
        """From a channel-last dense ``[B, *spatial, C]``: its non-zero cells."""
        sparse = x.to_sparse(x.dim() - 1)
        return cls(sparse.values(), sparse.indices().t().contiguous().int(), x.shape[1:-1], x.shape[0])

    def __add__(self, other) -> "SparseConvTensor":
        return self.replace_feature(self._features + (other.features if isinstance(other, SparseConvTensor) else other))

    __radd__ = __add__

    def __iadd__(self, other) -> "SparseConvTensor":
        self._features = self._features + (other.features if isinstance(other, SparseConvTensor) else other)
        return self

    def native_coords(self) -> Tensor:
        """int32 ``[N, 4]``: the indices times the stride, missing axes 0 (converted once)."""
        record = self._native_coords
        if record is None or record[0] is not self.indices or record[1] != self.indices._version:
            if record is not None:  # other indices than the family's: maps of their own
                self._cache = KernelMapCache()
            self._native_coords = (self.indices, self.indices._version, self._coords_at(self._stride))
        return self._native_coords[2]

    def _coords_at(self, stride: Triple) -> Tensor:
        """int32 ``[N, 4]``: the indices (missing axes 0) times ``stride``."""
        coords = torch.nn.functional.pad(self.indices, (0, 3 - self.ndim))
        if stride != (1, 1, 1):
            coords = coords * torch.tensor((1, *stride), dtype=torch.int32, device=coords.device)
        return coords.contiguous()

    def to_native(self, cache: Optional[KernelMapCache] = None) -> NativeTensor:
        """The pointsparse tensor (indices times the stride), in ``cache`` or the tensor's family."""
        coords = self.native_coords()
        return NativeTensor(self._features, coords, self._stride, self._cache if cache is None else cache,
                            spatial_range=pad3(self.spatial_shape, 1))

    def to_native_rebased(self, stride: Triple) -> NativeTensor:
        """The pointsparse tensor of these indices at tensor stride ``stride`` over a unit grid, in a
        family of its own: a generative transposed conv's input (its output cells are spconv's
        ``i * s - p + k * d``, whatever stride the level had in this tensor's family)."""
        return NativeTensor(self._features, self._coords_at(stride), stride, spatial_range=pad3(self.spatial_shape, 1))

    def from_native(self, y: NativeTensor) -> "SparseConvTensor":
        """A tensor of this batch for the pointsparse result ``y``."""
        if y.stride != (1, 1, 1):
            indices = y.coords // torch.tensor((1, *y.stride), dtype=torch.int32, device=y.coords.device)
            indices = indices[:, :self.ndim + 1].contiguous()
        else:  # a copy: code that edits indices in place must not move the family's coordinates
            indices = y.coords[:, :self.ndim + 1].clone()
        shape = list(y.spatial_range[:self.ndim]) if y.spatial_range is not None else self.spatial_shape
        out = SparseConvTensor(y.feats, indices, shape, self.batch_size, self.grid, self.voxel_num,
                               self.indice_dict, self.benchmark)
        out.benchmark_record = self.benchmark_record
        out._stride, out._cache = y.stride, y.cache
        out._native_coords = (indices, indices._version, y.coords)
        return out

    def __repr__(self) -> str:
        return f"SparseConvTensor[shape={tuple(self._features.shape)}] (pointsparse compat)"
