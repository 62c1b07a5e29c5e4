"""Between points and voxels: hash queries, voxelisation by mean and trilinear devoxelisation.

Point positions are float ``[P, 4]`` rows ``(batch, x, y, z)`` in units of the finest grid (the
coordinates of a stride-1 tensor), as SPVCNN keeps them. A voxel of a tensor at stride s covers
``[c, c + s)`` per axis from its coordinate c; for interpolation its feature sits at c (TorchSparse's
convention: shift the points by ``s / 2`` to place features at cell centres). Everything here is
made of torch ops and the kernel-map lookup, so it runs on every device the engine runs on, and
voxelize / devoxelize are differentiable in the features.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import ops
from .offsets import kernel_offsets
from .tensor import SparseTensor, check_coords_tensor


def hash_query(queries: Tensor, coords: Tensor, offsets: Optional[Tensor] = None) -> Tensor:
    """Row of ``coords`` (int32 ``[N, 4]``, unique) at each of ``queries`` (int32 ``[M, 4]``, any
    values, repeats allowed), -1 where absent: int64 ``[M]``. With ``offsets`` int32 ``[K, 3]``
    the rows at ``queries + offset`` for each offset: ``[M, K]``."""
    check_coords_tensor(queries, "queries")
    check_coords_tensor(coords, "coords")
    shifts = torch.zeros((1, 3), dtype=torch.int32) if offsets is None else offsets
    if shifts.dtype != torch.int32 or shifts.dim() != 2 or shifts.shape[1] != 3 or shifts.shape[0] == 0:
        raise ValueError(f"offsets must be int32 [K > 0, 3], got {shifts.dtype} {tuple(shifts.shape)}")
    shifts = shifts.to(coords.device)
    rows = torch.full((queries.shape[0], shifts.shape[0]), -1, dtype=torch.int64, device=coords.device)
    # Queries outside the packable range hold nothing; the lookup op is given only the others.
    (b_lo, b_hi), (c_lo, c_hi) = ops.BATCH_RANGE, ops.COORD_RANGE
    inside = ((queries[:, 0] >= b_lo) & (queries[:, 0] <= b_hi)
              & (queries[:, 1:] >= c_lo).all(1) & (queries[:, 1:] <= c_hi).all(1))
    if coords.shape[0] and bool(inside.any()):
        found = ops.build_kmap_hash(coords.contiguous(), queries[inside].contiguous(), shifts, False)
        rows[inside] = found.long()
    return rows if offsets is not None else rows[:, 0]


def voxel_rows(points: Tensor, x: SparseTensor) -> Tensor:
    """Row of ``x`` whose voxel holds each point (``floor(p / s) * s``), -1 where none: int64 ``[P]``."""
    return hash_query(_cells(points, x.stride), x.coords)


def voxelize(feats: Tensor, rows: Tensor, num_voxels: int, counts: Optional[Tensor] = None) -> Tensor:
    """Mean of ``feats [P, C]`` per voxel row ``rows [P]`` (-1: the point is dropped): ``[V, C]``,
    zero for voxels no point reaches. ``counts [V]``: points per voxel when already known
    (:func:`point_counts`). Differentiable in ``feats``."""
    if rows.shape != feats.shape[:1]:
        raise ValueError(f"rows must have shape [P={feats.shape[0]}], got {tuple(rows.shape)}")
    keep = rows >= 0
    index = rows[keep].long()
    sums = feats.new_zeros((num_voxels, feats.shape[1])).index_add(0, index, feats[keep])   # [V, C]
    counts = point_counts(rows, num_voxels) if counts is None else counts
    return sums / counts.clamp(min=1).to(feats.dtype)[:, None]


def point_counts(rows: Tensor, num_voxels: int) -> Tensor:
    """int64 ``[V]``: how many of ``rows [P]`` (-1 ignored) fall in each voxel."""
    return torch.bincount(rows[rows >= 0].long(), minlength=num_voxels)


def points_to_voxels(points: Tensor, feats: Tensor, x: SparseTensor) -> SparseTensor:
    """``x`` with each voxel's features replaced by the mean of the point features ``feats [P, C]``
    inside it (SPVCNN's point-to-voxel step)."""
    return x.with_feats(voxelize(feats, voxel_rows(points, x), x.coords.shape[0]))


def trilinear_weights(points: Tensor, x: SparseTensor) -> Tuple[Tensor, Tensor]:
    """The 8 voxels of ``x`` around each point and their trilinear weights: rows int64 ``[P, 8]``
    (-1 where absent) and weights ``[P, 8]`` in the points' dtype, renormalised over the present
    voxels (all zero when none is). Corner order: :func:`~pointsparse.offsets.kernel_offsets` of a
    size-2 kernel (x fastest)."""
    _check_points(points)
    step = torch.tensor(x.stride, dtype=points.dtype, device=points.device)
    scaled = points[:, 1:] / step                                                    # [P, 3]
    base = torch.floor(scaled)
    frac = scaled - base                                                             # [P, 3] in [0, 1)
    corners = kernel_offsets(2).to(points.device)                                     # [8, 3]
    anchor = torch.cat([points[:, :1], base * step], 1).int()                         # [P, 4]
    rows = hash_query(anchor, x.coords, corners * torch.tensor(x.stride, dtype=torch.int32, device=points.device))
    return rows, corner_weights(frac, corners, rows)


def corner_weights(frac: Tensor, corners: Tensor, rows: Tensor) -> Tensor:
    """Trilinear weights ``[P, J]`` of the cell corners ``corners [J, 3]`` (0/1 per axis) for
    positions ``frac [P, 3]`` inside the cell, zero where ``rows [P, J]`` is -1, renormalised over
    the rest (all zero when no corner is present)."""
    pick = corners.to(device=frac.device, dtype=frac.dtype)                          # [J, 3]
    weights = (pick[None] * frac[:, None] + (1 - pick[None]) * (1 - frac[:, None])).prod(-1)  # [P, J]
    weights = weights.masked_fill(rows < 0, 0)
    return weights / (weights.sum(1, keepdim=True) + 1e-8)


def interpolate(feats: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[:, j] * feats[rows[:, j]]`` over the columns of ``rows [P, J]`` (-1 adds
    nothing): ``[P, C]``. Differentiable in ``feats`` (and ``weights``)."""
    out = feats.new_zeros((rows.shape[0], feats.shape[1]))
    for j in range(rows.shape[1]):
        present = rows[:, j] >= 0
        picked = feats.index_select(0, rows[:, j].clamp(min=0))                      # [P, C]
        out = out + picked * (weights[:, j] * present).to(feats.dtype)[:, None]
    return out


def devoxelize(x: SparseTensor, points: Tensor, nearest: bool = False) -> Tensor:
    """Point features ``[P, C]`` interpolated trilinearly from the voxels of ``x`` around each point
    (``nearest``: the feature of the voxel holding it, zero when none)."""
    if nearest:
        rows = voxel_rows(points, x)[:, None]
        return interpolate(x.feats, rows, torch.ones(rows.shape, dtype=x.feats.dtype, device=rows.device))
    rows, weights = trilinear_weights(points, x)
    return interpolate(x.feats, rows, weights)


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor) or not points.is_floating_point():
        raise TypeError(f"points must be a floating-point torch.Tensor, got "
                        f"{getattr(points, 'dtype', type(points).__name__)}")
    if points.dim() != 2 or points.shape[1] != 4:
        raise ValueError(f"points must have shape [P, 4] as (batch, x, y, z), got {tuple(points.shape)}")


def _cells(points: Tensor, stride) -> Tensor:
    """int32 ``[P, 4]``: the cell corner ``floor(p / s) * s`` of each point at tensor stride s."""
    _check_points(points)
    step = torch.tensor(stride, dtype=points.dtype, device=points.device)
    return torch.cat([points[:, :1], torch.floor(points[:, 1:] / step) * step], 1).int()
