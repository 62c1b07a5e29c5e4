"""SparseTensor: features at unique integer voxel coordinates, with a shared kernel-map cache."""

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .config import ConvConfig, OutputRule
from .interop import as_torch, is_cupy
from .kmap import KernelMap, KernelMapCache, Triple, bind_coords, cached_kernel_map, register_coords, same_rows
from .offsets import IntOrTriple, as_triple


def check_coords_tensor(coords: Tensor, name: str = "coords") -> None:
    """coords must be an int32 ``[N, 4]`` tensor (range and uniqueness are checked by the ops)."""
    if not isinstance(coords, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 (batch, x, y, z), got {coords.dtype}; "
                        "quantise float positions with sparse_quantize or floor(...).int()")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] as (batch, x, y, z), got {tuple(coords.shape)}")


def same_coords(x: "SparseTensor", coords: Tensor, stride) -> bool:
    """Whether ``x`` is at ``coords`` (the same rows in the same order) and tensor ``stride``."""
    return tuple(x.stride) == tuple(stride) and same_rows(x.coords, coords)


def check_same_coords(tensors: Sequence["SparseTensor"], what: str) -> None:
    """ValueError unless all tensors share coordinates (same rows in the same order) and stride."""
    first = tensors[0]
    for other in tensors[1:]:
        if not same_coords(other, first.coords, first.stride):
            raise ValueError(f"{what} needs tensors at equal coordinates and stride")


def _array_in(value, name: str):
    """numpy and cupy arrays as tensors (cupy zero-copy through DLPack, on its GPU); others unchanged
    for the type checks to report."""
    return as_torch(value) if isinstance(value, np.ndarray) or is_cupy(value) else value


class SparseTensor:
    """Features ``feats [N, C]`` at coordinates ``coords`` int32 ``[N, 4]`` = (batch, x, y, z).

    ``feats`` and ``coords`` may be numpy or cupy arrays (viewed as tensors without a copy).
    Coordinates are in units of the finest grid and are multiples of the tensor ``stride`` (a 3-tuple).
    They must be unique; duplicates are reported when a kernel map is built. ``cache`` holds kernel
    maps and the coordinates at each tensor stride; tensors derived from this one share it. A cache
    passed in must hold these coordinates at this stride, or none at it (then they become its own):
    other coordinates raise ``ValueError``, as its maps would convolve the wrong neighbours.
    ``spatial_range`` (optional): cells per axis at this stride, ``coords / stride`` in ``[0, range)``;
    convolutions with :attr:`OutputRule.REACHED <pointsparse.config.OutputRule>` drop outputs outside
    the range their arithmetic gives (spconv's ``spatial_shape``, TorchSparse's ``spatial_range``).

    Coordinates, stride, cache and spatial range are read-only (the maps belong to them); ``feats``
    may be replaced by features of the same rows. New features: :meth:`with_feats`.
    """

    __slots__ = ("_feats", "_coords", "_stride", "_cache", "_spatial_range")

    def __init__(self, feats: Tensor, coords: Tensor, stride: IntOrTriple = 1,
                 cache: Optional[KernelMapCache] = None, *, spatial_range: Optional[Sequence[int]] = None):
        feats, coords = _array_in(feats, "feats"), _array_in(coords, "coords")
        check_coords_tensor(coords)
        _check_feats(feats, coords)
        stride = as_triple(stride, "stride", planar=1)
        joins = cache is not None
        if not joins:
            cache = KernelMapCache()
        elif not isinstance(cache, KernelMapCache):
            raise TypeError(f"cache must be a KernelMapCache, got {type(cache).__name__}")
        bind_coords(cache, stride, coords, foreign=joins)
        spatial_range = None if spatial_range is None else as_triple(tuple(spatial_range), "spatial_range", minimum=0, planar=1)
        if spatial_range is not None:
            cache.ranges.setdefault(stride, spatial_range)
        self._init(feats, coords, stride, cache, spatial_range)

    def _init(self, feats: Tensor, coords: Tensor, stride: Triple, cache: KernelMapCache,
              spatial_range: Optional[Triple]) -> None:
        object.__setattr__(self, "_feats", feats)
        object.__setattr__(self, "_coords", coords)
        object.__setattr__(self, "_stride", stride)
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_spatial_range", spatial_range)

    @classmethod
    def _derive(cls, feats: Tensor, coords: Tensor, stride: Triple, cache: KernelMapCache,
                spatial_range: Optional[Triple]) -> "SparseTensor":
        """A tensor of the family ``cache``, whose coordinates at ``stride`` are ``coords`` (the
        library's own path: a conv's output, new features; nothing re-checked). A new family gets
        them as its coordinates at ``stride``."""
        register_coords(cache, stride, coords)
        if spatial_range is not None:
            cache.ranges.setdefault(stride, spatial_range)
        out = cls.__new__(cls)
        out._init(feats, coords, stride, cache, spatial_range)
        return out

    @property
    def feats(self) -> Tensor:
        return self._feats

    @feats.setter
    def feats(self, feats: Tensor) -> None:
        _check_feats(feats, self._coords)
        object.__setattr__(self, "_feats", feats)

    @property
    def coords(self) -> Tensor:
        return self._coords

    @property
    def stride(self) -> Triple:
        return self._stride

    @property
    def cache(self) -> KernelMapCache:
        return self._cache

    @property
    def spatial_range(self) -> Optional[Triple]:
        return self._spatial_range

    def __reduce__(self):
        # pickle and copy (DataLoader workers, torch.save): the same features, coordinates and family
        return SparseTensor._derive, (self._feats, self._coords, self._stride, self._cache, self._spatial_range)

    def __setattr__(self, name: str, value) -> None:
        if name == "feats":
            return object.__setattr__(self, name, value)
        raise AttributeError(f"SparseTensor.{name} cannot be set: coordinates, stride, cache and spatial "
                             f"range are fixed (the kernel maps belong to them); build a new SparseTensor")

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if self.coords.shape[0] else 0

    def with_feats(self, feats: Tensor) -> "SparseTensor":
        """Same coordinates, stride, cache and spatial range, new ``feats [N, C']``."""
        _check_feats(feats, self.coords)
        return SparseTensor._derive(feats, self.coords, self.stride, self.cache, self.spatial_range)

    def to(self, target: Union[torch.device, str, torch.dtype], non_blocking: bool = False) -> "SparseTensor":
        """A dtype converts the features; a device moves both (with a fresh cache on a new device)."""
        if isinstance(target, torch.dtype):
            return self.with_feats(self.feats.to(target))
        device = torch.device(target)
        if _same_device(device, self.coords.device):
            return self  # keeps the cache and its kernel maps
        return SparseTensor(self.feats.to(device, non_blocking=non_blocking),
                            self.coords.to(device, non_blocking=non_blocking), self.stride,
                            spatial_range=self.spatial_range)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def cuda(self) -> "SparseTensor":
        return self.to("cuda")

    def dense(self, spatial_shape: Optional[Sequence[int]] = None,
              origin: Sequence[int] = (0, 0, 0)) -> Tensor:
        """Dense ``[B, C, X, Y, Z]`` grid (zeros where empty); voxel c lands at ``(c - origin) / stride``.

        ``spatial_shape`` defaults to the tensor's spatial range, else the smallest grid holding
        every voxel.
        """
        step = torch.tensor(self.stride, device=self.coords.device)
        offset = self.coords[:, 1:] - torch.tensor(origin, device=self.coords.device)  # [N, 3]
        if bool((offset % step != 0).any()):
            raise ValueError(f"coordinates minus origin {tuple(origin)} must be multiples of the "
                             f"tensor stride {self.stride}")
        index = (offset // step).long()                                                 # [N, 3]
        if spatial_shape is None and self.spatial_range is not None and tuple(origin) == (0, 0, 0):
            spatial_shape = self.spatial_range
        if spatial_shape is None:
            spatial_shape = (index.max(0).values + 1).tolist() if index.shape[0] else [0, 0, 0]
        shape = as_triple(tuple(spatial_shape), "spatial_shape", minimum=0, planar=1)
        if index.shape[0] and (bool((index < 0).any()) or
                               bool((index >= torch.tensor(shape, device=index.device)).any())):
            raise ValueError(f"coordinates fall outside the dense grid {shape} at origin {tuple(origin)}")
        grid = self.feats.new_zeros((self.batch_size, *shape, self.num_channels))     # [B, X, Y, Z, C]
        grid[self.coords[:, 0].long(), index[:, 0], index[:, 1], index[:, 2]] = self.feats
        return grid.permute(0, 4, 1, 2, 3).contiguous()                               # [B, C, X, Y, Z]

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        if not isinstance(other, SparseTensor):
            return NotImplemented
        check_same_coords([self, other], "+")
        return self.with_feats(self.feats + other.feats)

    def __repr__(self) -> str:
        return (f"SparseTensor(num_points={self.coords.shape[0]}, channels={self.num_channels}, "
                f"stride={self.stride}, dtype={self.feats.dtype}, device={self.coords.device})")


def _check_feats(feats: Tensor, coords: Tensor) -> None:
    """feats must be a ``[N, C]`` tensor with a row per coordinate, on the coordinates' device."""
    if not isinstance(feats, Tensor):
        raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"feats must have shape [N, C] with N = {coords.shape[0]} rows of coords, "
                         f"got {tuple(feats.shape)}")
    if feats.device != coords.device:
        raise ValueError(f"feats ({feats.device}) and coords ({coords.device}) must share a device")


def _same_device(requested: torch.device, current: torch.device) -> bool:
    """Whether ``requested`` names ``current``; an index-free device (``"cuda"``) means the current
    one of its type, as ``Tensor.to`` reads it."""
    if requested.type != current.type:
        return False
    if requested.index is None and requested.type != "cpu":
        module = getattr(torch, requested.type, None)
        index = module.current_device() if module is not None and hasattr(module, "current_device") else 0
        return index == current.index
    return requested.index == current.index or requested.type == "cpu"


def kernel_map(x: SparseTensor, kernel_size: IntOrTriple = 3, stride: IntOrTriple = 1,
               dilation: IntOrTriple = 1, transposed: bool = False,
               config: ConvConfig = ConvConfig(), *, outputs: OutputRule = OutputRule.OCCUPIED,
               padding: Optional[IntOrTriple] = None, generative: bool = False) -> KernelMap:
    """The kernel map of a conv applied to ``x``, from ``x.cache`` or built into it
    (semantics in :mod:`pointsparse.kmap`)."""
    return cached_kernel_map(x.cache, x.coords, x.stride, kernel_size, stride, dilation, transposed, config,
                             outputs=outputs, padding=padding, spatial_range=x.spatial_range,
                             generative=generative)
