"""From points to voxels: quantisation of one cloud and collation of several into one batch."""

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from . import ops
from .interop import as_torch, is_cupy, like
from .tensor import SparseTensor

ArrayLike = Union[np.ndarray, Tensor]


def sparse_quantize(points: ArrayLike, voxel_size: Union[float, Sequence[float]],
                    return_index: bool = False, return_inverse: bool = False):
    """Voxel coordinates ``floor(points / voxel_size)`` of ``points [N, 3]``, deduplicated.

    Voxel i covers ``[i * voxel_size, (i + 1) * voxel_size)`` on each axis (floor, as TorchSparse;
    SemanticKITTI frame 07/000964 gives 78,744 voxels at 0.05 m, where rounding would give 78,855).
    Returns ``coords`` int32 ``[M, 3]`` sorted by (x, y, z); with ``return_index`` also ``index``
    ``[M]`` (first point of each voxel: ``coords == voxels_of_points[index]``); with
    ``return_inverse`` also ``inverse`` ``[N]`` (voxel of each point: ``coords[inverse]``). Outputs
    are numpy arrays for numpy input, tensors (on the input's device) for tensor input and cupy arrays
    (on its GPU, through DLPack without a copy of the input) for cupy input.
    """
    if not isinstance(points, (np.ndarray, Tensor)) and not is_cupy(points):
        raise TypeError(f"points must be a numpy array, torch.Tensor or cupy array, got {type(points).__name__}")
    pts = as_torch(points)
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(pts.shape)}")
    size = torch.as_tensor(voxel_size, dtype=torch.float64, device=pts.device).expand(3)
    if not bool((size > 0).all()):
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if pts.is_floating_point() and not bool(torch.isfinite(pts).all()):
        raise ValueError("points must be finite")
    voxels = torch.floor(pts.double() / size)                                          # [N, 3]
    low, high = ops.COORD_RANGE
    if voxels.shape[0] and (voxels.min() < low or voxels.max() > high):
        raise ValueError(f"voxel coordinates must be in [{low}, {high}]; got "
                         f"[{int(voxels.min())}, {int(voxels.max())}]: use a larger voxel_size")
    coords = torch.cat([voxels.new_zeros((voxels.shape[0], 1)), voxels], 1).int()     # [N, 4]
    index, inverse = ops.unique_coords(coords)
    outputs = [coords[index, 1:]]
    if return_index:
        outputs.append(index)
    if return_inverse:
        outputs.append(inverse)
    outputs = [like(t, points) for t in outputs]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def sparse_collate(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """One batched tensor from single-item tensors (batch column 0): item k gets batch index k."""
    if len(tensors) == 0:
        raise ValueError("sparse_collate needs at least one tensor")
    stride = tensors[0].stride
    for k, item in enumerate(tensors):
        if not isinstance(item, SparseTensor):
            raise TypeError(f"item {k} is a {type(item).__name__}, not a SparseTensor")
        if item.stride != stride:
            raise ValueError(f"item {k} has tensor stride {item.stride}, item 0 has {stride}")
        if item.coords.shape[0] and bool((item.coords[:, 0] != 0).any()):
            raise ValueError(f"item {k} already holds several batch items (batch column not 0)")
    coords = torch.cat([item.coords for item in tensors])                                # [N, 4]
    counts = torch.tensor([item.coords.shape[0] for item in tensors], device=coords.device)
    coords[:, 0] = torch.repeat_interleave(torch.arange(len(tensors), device=coords.device,
                                                        dtype=torch.int32), counts)
    return SparseTensor(torch.cat([item.feats for item in tensors]), coords, stride)
