"""TorchSparse 2.1's SparseTensor and PointTensor over pointsparse's SparseTensor.

TorchSparse stores coordinates at tensor stride s as ``floor(c / s)`` (cell indices of that
level), batch first; pointsparse stores multiples of s on the finest grid. Conversion happens at
the boundary of every op and is cached, so a chain of convs converts once per stride.
"""

import enum
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ... import SparseTensor as NativeTensor
from ...interop import as_torch
from ...kmap import KernelMapCache

Triple = Tuple[int, int, int]


def make_ntuple(x, ndim: int) -> Tuple[int, ...]:
    """An int, list, tuple or tensor as an ``ndim``-tuple of ints (TorchSparse's helper)."""
    if isinstance(x, int):
        x = (x,) * ndim
    elif isinstance(x, Tensor):
        x = tuple(int(v) for v in x.reshape(-1).tolist())
    else:
        x = tuple(int(v) for v in x)
    if len(x) != ndim:
        raise ValueError(f"expected {ndim} values, got {x}")
    return x


class TensorCacheMode(enum.Enum):
    SEPARATE_TENSOR_CACHE = 0
    GLOBAL_TENSOR_CACHE = 1


_cache_mode = TensorCacheMode.SEPARATE_TENSOR_CACHE
_global_cache: Optional["TensorCache"] = None


def set_tensor_cache_mode(mode: TensorCacheMode) -> None:
    global _cache_mode
    if not isinstance(mode, TensorCacheMode):
        raise TypeError(f"mode must be a TensorCacheMode, got {mode!r}")
    _cache_mode = mode


def get_tensor_cache_mode() -> TensorCacheMode:
    return _cache_mode


def get_global_tensor_cache() -> Optional["TensorCache"]:
    return _global_cache


def set_global_tensor_cache(cache: Optional["TensorCache"]) -> None:
    global _global_cache
    _global_cache = cache


def clear_global_tensor_cache() -> None:
    set_global_tensor_cache(None)


class TensorCache:
    """Shared by the tensors of one network pass. ``cmaps[stride] = (coords, spatial_range)`` as in
    TorchSparse; ``kmaps`` and ``hashmaps`` are kept for client code (pointsparse's own maps live in
    ``native``). Client code may add attributes, as SPVNAS does."""

    def __init__(self) -> None:
        self.cmaps: Dict[Triple, Tuple[Tensor, Optional[Tuple[int, ...]]]] = {}
        self.kmaps: Dict[tuple, object] = {}
        self.hashmaps: Dict[Triple, object] = {}
        self.native = KernelMapCache()
        self.converted: Dict[Triple, Tuple[Tensor, Tensor]] = {}  # stride -> (native coords, ours)

    def fork(self) -> "TensorCache":
        """A cache for new coordinates (a generative conv): client attributes shared, maps fresh."""
        other = TensorCache()
        for name, value in vars(self).items():
            if name not in ("cmaps", "kmaps", "hashmaps", "native", "converted"):
                setattr(other, name, value)
        return other


def _new_cache() -> TensorCache:
    if _cache_mode is TensorCacheMode.GLOBAL_TENSOR_CACHE:
        if _global_cache is None:
            set_global_tensor_cache(TensorCache())
        return _global_cache
    return TensorCache()


class SparseTensor:
    """``feats [N, C]`` at ``coords`` int32 ``[N, 4]`` = (batch, x, y, z) in cell indices of the
    tensor stride; ``spatial_range`` (optional) ``(B, X, Y, Z)`` or ``(X, Y, Z)``. Numpy and cupy
    arrays are accepted (cupy zero-copy through DLPack). ``to`` / ``cuda`` / ``cpu`` / ``half`` /
    ``detach`` act in place and return the tensor, as in TorchSparse."""

    def __init__(self, feats, coords, stride: Union[int, Sequence[int]] = 1,
                 spatial_range: Optional[Sequence[int]] = None) -> None:
        self.feats = as_torch(feats)
        self.coords = as_torch(coords)
        self.stride = make_ntuple(stride, 3)
        self.spatial_range = None if spatial_range is None else tuple(int(v) for v in spatial_range)
        self._caches = _new_cache()
        self._native_coords: Optional[Tuple[Tensor, Tensor]] = None  # (self.coords, native coords)

    F = property(lambda self: self.feats, lambda self, v: setattr(self, "feats", v))
    C = property(lambda self: self.coords, lambda self, v: setattr(self, "coords", v))

    @property
    def s(self) -> Triple:
        return self.stride

    @s.setter
    def s(self, stride) -> None:
        self.stride = make_ntuple(stride, 3)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def cuda(self) -> "SparseTensor":
        return self.to("cuda")

    def half(self) -> "SparseTensor":
        self.feats = self.feats.half()
        return self

    def detach(self) -> "SparseTensor":
        self.feats, self.coords = self.feats.detach(), self.coords.detach()
        return self

    def to(self, device, non_blocking: bool = True) -> "SparseTensor":
        self.feats = self.feats.to(device, non_blocking=non_blocking)
        if not isinstance(device, torch.dtype):
            self.coords = self.coords.to(device, non_blocking=non_blocking)
        return self

    def dense(self) -> Tensor:
        """Channel-last ``[B, X, Y, Z, C]`` over ``spatial_range`` (which must be set)."""
        if self.spatial_range is None:
            raise ValueError("dense() needs the tensor's spatial_range (TorchSparse's rule)")
        shape = self.spatial_range if len(self.spatial_range) == 4 else (int(self.coords[:, 0].max()) + 1,
                                                                          *self.spatial_range)
        grid = self.feats.new_zeros((*shape, self.feats.shape[1]))
        index = self.coords.long()
        return grid.index_put((index[:, 0], index[:, 1], index[:, 2], index[:, 3]), self.feats)

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        return self.derive(self.feats + other.feats)

    def derive(self, feats: Tensor) -> "SparseTensor":
        """Same coordinates, stride, range and cache, new ``feats``."""
        out = SparseTensor(feats, self.coords, self.stride, self.spatial_range)
        out._caches, out._native_coords = self._caches, self._native_coords
        return out

    def to_native(self) -> NativeTensor:
        """The pointsparse tensor: coordinates times the stride, the cache's native family."""
        if self._native_coords is None or self._native_coords[0] is not self.coords:
            coords = self.coords if self.coords.dtype == torch.int32 else self.coords.int()
            if self.stride != (1, 1, 1):
                coords = coords * torch.tensor((1, *self.stride), dtype=torch.int32, device=coords.device)
            self._native_coords = (self.coords, coords.contiguous())
        spatial = self.spatial_range[-3:] if self.spatial_range is not None else None
        return NativeTensor(self.feats, self._native_coords[1], self.stride, self._caches.native, spatial_range=spatial)

    @staticmethod
    def from_native(x: NativeTensor, caches: TensorCache, batch_range: Optional[int] = None) -> "SparseTensor":
        """The TorchSparse view of a pointsparse tensor in ``caches`` (its ``cmaps`` updated)."""
        known = caches.converted.get(x.stride)
        if known is not None and known[0] is x.coords:
            coords = known[1]
        elif x.stride == (1, 1, 1):
            coords = x.coords
        else:
            coords = x.coords // torch.tensor((1, *x.stride), dtype=torch.int32, device=x.coords.device)
        caches.converted[x.stride] = (x.coords, coords)
        spatial = None if x.spatial_range is None else (
            (batch_range, *x.spatial_range) if batch_range is not None else tuple(x.spatial_range))
        out = SparseTensor(x.feats, coords, x.stride, spatial)
        out._caches, out._native_coords = caches, (coords, x.coords)
        caches.cmaps.setdefault(out.stride, (coords, spatial))
        return out

    def __repr__(self) -> str:
        return f"SparseTensor(torchsparse compat, num_points={self.coords.shape[0]}, stride={self.stride})"


class PointTensor:
    """TorchSparse's point cloud record: ``F [P, C]``, ``C [P, 4]`` float (batch, x, y, z), and
    the per-stride lookups SPVCNN keeps (``idx_query``, ``weights``, ``additional_features``)."""

    def __init__(self, feats, coords, idx_query=None, weights=None):
        self.F = as_torch(feats)
        self.C = as_torch(coords)
        self.idx_query = idx_query if idx_query is not None else {}
        self.weights = weights if weights is not None else {}
        self.additional_features = {"idx_query": {}, "counts": {}}

    def cuda(self) -> "PointTensor":
        return self.to("cuda")

    def detach(self) -> "PointTensor":
        self.F, self.C = self.F.detach(), self.C.detach()
        return self

    def to(self, device, non_blocking: bool = True) -> "PointTensor":
        self.F = self.F.to(device, non_blocking=non_blocking)
        self.C = self.C.to(device, non_blocking=non_blocking)
        return self

    def __add__(self, other: "PointTensor") -> "PointTensor":
        out = PointTensor(self.F + other.F, self.C, self.idx_query, self.weights)
        out.additional_features = self.additional_features
        return out
