"""Points to voxels of at most ``max_points`` points each: the voxel generator of detection pipelines
(spconv's ``Point2VoxelCPU3d``; :mod:`pointsparse.compat.spconv` offers it under spconv's names).

A point lands in voxel ``floor((p - range_min) / voxel_size)`` per axis when that cell lies in the
grid of ``round((range_max - range_min) / voxel_size)`` cells (computed in float32, as spconv does);
other points are dropped. Voxels are numbered in the order of their first point; points keep their
order within a voxel, and those beyond ``max_points`` are dropped (they still belong to the voxel:
``point_voxel_id``); points that would open a voxel beyond ``max_voxels`` are dropped. Vectorised
torch (one sort), on the points' device.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Voxels:
    voxels: Tensor          # [M, max_points, C] in the points' dtype (float32 for spconv's classes), zero-padded
    indices: Tensor         # int32 [M, 3] as (z, y, x)
    num_points: Tensor      # int32 [M]: points kept per voxel
    point_voxel_id: Tensor  # int64 [N]: each point's voxel, -1 where dropped by range or max_voxels


def grid_of(voxel_size: Sequence[float], coors_range: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(voxel_size_xyz, range_xyz [6], grid_size_xyz)`` as spconv computes them: float32, the grid
    rounded."""
    size = np.asarray(voxel_size, dtype=np.float32)
    bounds = np.asarray(coors_range, dtype=np.float32)
    if size.shape != (3,) or bounds.shape != (6,):
        raise ValueError(f"voxel size needs 3 values and the range 6 (x, y, z min, then max), got "
                         f"{list(voxel_size)} and {list(coors_range)}")
    if not (size > 0).all():
        raise ValueError(f"voxel sizes must be positive, got {list(voxel_size)}")
    cells = ((bounds[3:] - bounds[:3]) / size).astype(np.float64)                  # float32 arithmetic
    grid = (np.sign(cells) * np.floor(np.abs(cells) + 0.5)).astype(np.int64)        # std::round: half away from 0
    if not (grid > 0).all():
        raise ValueError(f"the range {list(coors_range)} holds no voxel of size {list(voxel_size)}")
    return size, bounds, grid


def voxelize(points: Tensor, voxel_size: Sequence[float], coors_range: Sequence[float], max_points: int,
             max_voxels: int, empty_mean: bool = False) -> Voxels:
    """The voxels of ``points [N, C]`` (x, y, z first). ``empty_mean``: slots past a voxel's points
    hold the mean of its points instead of zeros."""
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be a tensor [N, C >= 3], got {getattr(points, 'shape', type(points))}")
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
    if max_points < 1 or max_voxels < 0:
        raise ValueError(f"max_points must be >= 1 and max_voxels >= 0, got {max_points} and {max_voxels}")
    size, bounds, grid = grid_of(voxel_size, coors_range)
    device = points.device
    # The cell arithmetic of spconv: in the points' precision (float32 at least), from float32 range
    # and size.
    xyz = points[:, :3] if points.dtype == torch.float64 else points[:, :3].float()
    low = torch.from_numpy(bounds[:3]).to(device, xyz.dtype)
    step = torch.from_numpy(size).to(device, xyz.dtype)
    cells = torch.floor((xyz - low) / step).long()                                   # [N, 3] (x, y, z)
    inside = ((cells >= 0) & (cells < torch.from_numpy(grid).to(device))).all(1)    # [N]
    n = points.shape[0]
    valid = torch.nonzero(inside).flatten()                                          # [V] ascending
    key = (cells[valid, 2] * int(grid[1]) + cells[valid, 1]) * int(grid[0]) + cells[valid, 0]  # [V], z-major
    # One stable sort by key: runs are voxels, points in input order within each.
    order = torch.sort(key, stable=True).indices                                     # [V]
    sorted_key, point = key[order], valid[order]                                     # [V]
    starts = torch.ones_like(sorted_key, dtype=torch.bool)
    starts[1:] = sorted_key[1:] != sorted_key[:-1]
    run = torch.cumsum(starts, 0) - 1                                                # [V] run of each point
    run_start = torch.nonzero(starts).flatten()                                      # [R]
    first = point[run_start]                                                         # [R] first point of each run
    # Voxels in the order of their first point; the first max_voxels survive.
    kept = torch.argsort(first)[:max_voxels]                                         # [M] runs
    rank = torch.full_like(first, -1)
    rank[kept] = torch.arange(kept.numel(), device=device)
    voxel_of = rank[run]                                                             # [V]
    position = torch.arange(run.numel(), device=device) - run_start[run]             # [V] within its voxel
    point_voxel = torch.full((n,), -1, dtype=torch.long, device=device)
    point_voxel[point] = voxel_of
    m = kept.numel()
    take = (voxel_of >= 0) & (position < max_points)
    voxels = points.new_zeros((m, max_points, points.shape[1]))
    voxels[voxel_of[take], position[take]] = points[point[take]]
    counts = torch.bincount(voxel_of[take], minlength=m)                             # [M]
    indices = cells[first[kept]].flip(1).int()                                       # [M, 3] as (z, y, x)
    if empty_mean and m:
        mean = voxels.sum(1) / counts.clamp_min(1)[:, None].to(points.dtype)         # [M, C]
        empty = torch.arange(max_points, device=device)[None] >= counts[:, None]     # [M, max_points]
        voxels = torch.where(empty[..., None], mean[:, None], voxels)
    return Voxels(voxels, indices, counts.int(), point_voxel)
