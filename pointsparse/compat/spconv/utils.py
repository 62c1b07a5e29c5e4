"""spconv's voxel generators over :func:`pointsparse.voxel_generator.voxelize`: ``spconv.utils``'s
``Point2VoxelCPU3d`` and ``Point2VoxelGPU3d``, and ``spconv.pytorch.utils``' ``PointToVoxel`` and
``gather_features_by_pc_voxel_id``.

Outputs equal spconv's CPU class on the same points (voxels float32 ``[M, max_points, C]``, indices
int32 ``[M, 3]`` as (z, y, x), points per voxel int32 ``[M]``), as torch tensors (``.numpy()``
works as on spconv's tensorview results). Two deliberate differences: ``empty_mean`` fills with
each voxel's own mean (spconv's CPU kernel carries the running mean over from the voxel before; its
GPU kernel is right), and the GPU class numbers voxels as the CPU class does (spconv's GPU hash
numbers them in no fixed order).
"""

from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ...voxel_generator import Voxels, grid_of, voxelize


def _points(points, device: torch.device) -> Tensor:
    """numpy arrays, torch tensors and spconv's tensorview tensors (anything with ``.numpy()``)."""
    if isinstance(points, Tensor):
        return points.to(device)
    if not isinstance(points, np.ndarray) and hasattr(points, "numpy"):
        points = points.numpy()
    if not isinstance(points, np.ndarray):
        raise TypeError(f"points must be a tensor or an array, got {type(points).__name__}")
    return torch.from_numpy(np.ascontiguousarray(points)).to(device)


class Point2VoxelCPU3d:
    """spconv's signature: ``(vsize_xyz, coors_range_xyz, num_point_features, max_num_voxels,
    max_num_points_per_voxel)``."""

    device = torch.device("cpu")

    def __init__(self, vsize_xyz: Sequence[float], coors_range_xyz: Sequence[float], num_point_features: int,
                 max_num_voxels: int, max_num_points_per_voxel: int):
        self.vsize_xyz, self.coors_range_xyz, grid = grid_of(vsize_xyz, coors_range_xyz)
        self.num_point_features = int(num_point_features)
        self.max_num_voxels, self.max_num_points_per_voxel = int(max_num_voxels), int(max_num_points_per_voxel)
        self._grid_xyz = grid

    @property
    def grid_size(self) -> List[int]:
        """Cells per axis, (z, y, x)."""
        return [int(v) for v in self._grid_xyz[::-1]]

    @staticmethod
    def calc_meta_data(vsize_xyz: Sequence[float], coors_range_xyz: Sequence[float]):
        """``(vsize_zyx, grid_size_zyx, grid_stride_zyx, coors_range_zyx [min..., max...])``."""
        size, bounds, grid = grid_of(vsize_xyz, coors_range_xyz)
        grid_zyx = [int(v) for v in grid[::-1]]
        stride = [grid_zyx[1] * grid_zyx[2], grid_zyx[2], 1]
        return ([float(v) for v in size[::-1]], grid_zyx, stride,
                [float(v) for v in np.r_[bounds[:3][::-1], bounds[3:][::-1]]])

    def _voxelize(self, points, empty_mean: bool) -> Voxels:
        points = _points(points, self.device)
        if points.dim() != 2 or points.shape[1] != self.num_point_features:
            raise ValueError(f"your points num features doesn't equal to voxel: points {tuple(points.shape)}, "
                             f"num_point_features {self.num_point_features}")
        voxels = voxelize(points, self.vsize_xyz, self.coors_range_xyz, self.max_num_points_per_voxel,
                          self.max_num_voxels, empty_mean)
        return Voxels(voxels.voxels.float(), voxels.indices, voxels.num_points, voxels.point_voxel_id)

    def point_to_voxel(self, points, clear_voxels: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """``(voxels, indices, num_per_voxel)``; ``clear_voxels`` is accepted (outputs are always new)."""
        v = self._voxelize(points, empty_mean=False)
        return v.voxels, v.indices, v.num_points

    def point_to_voxel_empty_mean(self, points, clear_voxels: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        v = self._voxelize(points, empty_mean=True)
        return v.voxels, v.indices, v.num_points


class Point2VoxelGPU3d(Point2VoxelCPU3d):
    """The same on the current CUDA device (``point_to_voxel_hash``)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def point_to_voxel_hash(self, points, clear_voxels: bool = True, empty_mean: bool = False,
                            stream_int: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
        v = self._voxelize(points, empty_mean)
        return v.voxels, v.indices, v.num_points


class PointToVoxel:
    """``spconv.pytorch.utils.PointToVoxel``: torch in, torch out, on ``device``."""

    def __init__(self, vsize_xyz: Sequence[float], coors_range_xyz: Sequence[float], num_point_features: int,
                 max_num_voxels: int, max_num_points_per_voxel: int, device: torch.device = torch.device("cpu:0")):
        self.device = torch.device(device)
        self._generator = Point2VoxelCPU3d(vsize_xyz, coors_range_xyz, num_point_features, max_num_voxels,
                                           max_num_points_per_voxel)
        self._generator.device = self.device
        self.grid_size = self._generator.grid_size
        self.vsize, self.coors_range = self._generator.vsize_xyz, self._generator.coors_range_xyz

    def __call__(self, pc: Tensor, clear_voxels: bool = True, empty_mean: bool = False):
        """``(voxels, indices, num_per_voxel)``."""
        return self.generate_voxel_with_id(pc, clear_voxels, empty_mean)[:3]

    def generate_voxel_with_id(self, pc: Tensor, clear_voxels: bool = True, empty_mean: bool = False):
        """``(voxels, indices, num_per_voxel, pc_voxel_id)``: each point's voxel, -1 where dropped."""
        v = self._generator._voxelize(pc, empty_mean)
        return v.voxels, v.indices, v.num_points, v.point_voxel_id


def gather_features_by_pc_voxel_id(seg_res_features: Tensor, pc_voxel_id: Tensor,
                                   invalid_value: Union[int, float] = 0) -> Tensor:
    """Per point, the features of its voxel (``invalid_value`` for points without one)."""
    pc_voxel_id = pc_voxel_id.to(seg_res_features.device)
    out = seg_res_features.new_full((pc_voxel_id.shape[0], *seg_res_features.shape[1:]), invalid_value)
    valid = pc_voxel_id >= 0
    out[valid] = seg_res_features[pc_voxel_id[valid]]
    return out
