"""``torchsparse.utils`` (with its ``quantize``, ``collate``, ``tensor_cache`` and ``utils``
submodules): quantisation, collation, the tensor cache and small helpers."""

from functools import lru_cache
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ...interop import as_torch, like
from ...ops import first_occurrence
from .tensor import (SparseTensor, TensorCache, TensorCacheMode, clear_global_tensor_cache,
                     get_global_tensor_cache, get_tensor_cache_mode, make_ntuple, set_global_tensor_cache,
                     set_tensor_cache_mode)

__all__ = ["SparseTensor", "TensorCache", "TensorCacheMode", "clear_global_tensor_cache", "get_global_tensor_cache",
           "get_tensor_cache_mode", "make_divisible", "make_ntuple", "make_tensor", "set_global_tensor_cache",
           "set_tensor_cache_mode", "sparse_collate", "sparse_collate_fn", "sparse_quantize", "to_dense"]


@lru_cache()
def make_tensor(x: Tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
    return torch.tensor(x, dtype=dtype, device=device)


def make_divisible(x: int, divisor: int) -> int:
    return (x + divisor - 1) // divisor * divisor


def sparse_quantize(coords, voxel_size: Union[float, Sequence[float]] = 1, *, return_index: bool = False,
                    return_inverse: bool = False):
    """Unique ``floor(coords / voxel_size)`` rows of ``coords [N, D]`` (any D; numpy, torch or cupy),
    sorted lexicographically, as int32 in the input's array type; with ``return_index`` the first
    row of each, with ``return_inverse`` the voxel of each row (TorchSparse's contract, where
    ``voxel_size`` defaults to 1)."""
    data = as_torch(coords)
    if data.dim() != 2:
        raise ValueError(f"coords must have shape [N, D], got {tuple(data.shape)}")
    size = torch.as_tensor(voxel_size, dtype=torch.float64, device=data.device)
    if size.dim() and size.shape[0] != data.shape[1]:
        raise ValueError(f"voxel_size has {size.shape[0]} entries for {data.shape[1]} columns")
    if not bool((size > 0).all()):
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    cells = torch.floor(data.double() / size).int()                                   # [N, D]
    unique, inverse = torch.unique(cells, dim=0, return_inverse=True)
    index = first_occurrence(inverse, unique.shape[0])
    outputs = [like(unique, coords)]
    if return_index:
        outputs.append(like(index, coords))
    if return_inverse:
        outputs.append(like(inverse, coords))
    return outputs[0] if len(outputs) == 1 else outputs


def sparse_collate(inputs: List[SparseTensor]) -> SparseTensor:
    """One batch from per-item tensors: items with ``[N, 3]`` coordinates get a batch column in
    front, items with ``[N, 4]`` have theirs (which must be 0) set to their position."""
    if not inputs:
        raise ValueError("sparse_collate needs at least one tensor")
    stride = inputs[0].stride
    coords, feats = [], []
    for k, item in enumerate(inputs):
        c, f = as_torch(item.coords), as_torch(item.feats)
        if item.stride != stride:
            raise ValueError(f"item {k} has stride {item.stride}, item 0 has {stride}")
        if c.dim() != 2 or c.shape[1] not in (3, 4):
            raise ValueError(f"item {k}: coords must be [N, 3] or [N, 4], got {tuple(c.shape)}")
        if c.shape[1] == 4:
            if c.shape[0] and bool((c[:, 0] != 0).any()):
                raise ValueError(f"item {k} already holds several batch items (batch column not 0)")
            c = c[:, 1:]
        batch = torch.full((c.shape[0], 1), k, dtype=torch.int32, device=c.device)
        coords.append(torch.cat([batch, c.int()], 1))
        feats.append(f)
    return SparseTensor(torch.cat(feats), torch.cat(coords), stride)


def sparse_collate_fn(inputs: List[Any]) -> Any:
    """TorchSparse's collate_fn: dicts of SparseTensors (collated), arrays and tensors (stacked),
    nested dicts, anything else listed."""
    if not isinstance(inputs[0], dict):
        return inputs
    output = {}
    for name, first in inputs[0].items():
        values = [item[name] for item in inputs]
        if isinstance(first, dict):
            output[name] = sparse_collate_fn(values)
        elif isinstance(first, np.ndarray):
            output[name] = torch.stack([torch.from_numpy(v) for v in values])
        elif isinstance(first, Tensor):
            output[name] = torch.stack(values)
        elif isinstance(first, SparseTensor):
            output[name] = sparse_collate(values)
        else:
            output[name] = values
    return output


def to_dense(feats: Tensor, coords: Tensor, spatial_range: Tuple[int, ...]) -> Tensor:
    """Channel-last dense grid ``[*spatial_range, C]`` of ``feats`` at ``coords``."""
    return SparseTensor(feats, coords, spatial_range=spatial_range).dense()
