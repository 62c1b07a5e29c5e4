"""Point clouds in, predictions out: KITTI ``.bin`` files, Open3D objects and files (``.pcd``,
``.ply``, ...), numpy arrays. Open3D is an optional extra (``pip install pointsparse[open3d]``),
imported only when a file or object needs it.
"""

from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .extras import import_extra
from .quantize import sparse_quantize
from .tensor import SparseTensor

KITTI_SUFFIXES = (".bin",)
LABEL_SUFFIXES = (".label",)


def read_point_cloud(source: Any) -> np.ndarray:
    """float32 ``[N, 4]`` (x, y, z, intensity) from a KITTI ``.bin`` path, any point-cloud file
    Open3D reads (intensity from its ``intensity`` attribute, else 0), an Open3D point cloud
    (legacy or tensor), or an array ``[N, 3]`` / ``[N, 4]``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"point cloud {path} not found")
        if path.suffix.lower() in KITTI_SUFFIXES:
            from .datasets import read_points

            return read_points(path)
        o3d = _open3d(f"reading {path.suffix} files")
        cloud = o3d.t.io.read_point_cloud(str(path))
        if "positions" not in cloud.point or len(cloud.point.positions) == 0:
            raise ValueError(f"{path}: no points read (is it a point-cloud file Open3D knows?)")
        return _from_tensor_cloud(cloud)
    if isinstance(source, np.ndarray):
        if source.ndim != 2 or source.shape[1] not in (3, 4):
            raise ValueError(f"points must have shape [N, 3] or [N, 4], got {source.shape}")
        return _with_intensity(source[:, :3], source[:, 3] if source.shape[1] == 4 else None)
    module = type(source).__module__
    if module.startswith("open3d"):
        o3d = _open3d("Open3D point clouds")
        if isinstance(source, o3d.geometry.PointCloud):
            return _with_intensity(np.asarray(source.points), None)
        if isinstance(source, o3d.t.geometry.PointCloud):
            return _from_tensor_cloud(source)
    raise TypeError(f"cannot read points from {type(source).__name__}: pass a path, an Open3D point cloud "
                    "or a numpy array")


def voxelize_scan(points: np.ndarray, voxel_size: float, device: str = "cpu") -> Tuple[SparseTensor, Tensor]:
    """One scan ``[N, 4]`` as a batch of one: voxels at ``floor(p / voxel_size)`` with the
    (x, y, z, intensity) of their first point as features, and the voxel of each point ``[N]``."""
    xyz, index, inverse = sparse_quantize(points[:, :3], voxel_size, return_index=True, return_inverse=True)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.int32), torch.as_tensor(xyz).int()], 1)
    x = SparseTensor(torch.as_tensor(points[index]).float(), coords).to(device)
    return x, torch.as_tensor(inverse)


def prediction_cloud(points: np.ndarray, labels: np.ndarray):
    """An Open3D point cloud of ``points [N, >=3]`` coloured by training-class ``labels [N]``."""
    from .datasets.colors import class_colors

    o3d = _open3d("coloured predictions")
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.asarray(points)[:, :3].astype(np.float64))
    cloud.colors = o3d.utility.Vector3dVector(class_colors()[labels])
    return cloud


def write_prediction(path: Union[str, Path], points: np.ndarray, labels: np.ndarray) -> Path:
    """Writes per-point training-class ``labels``: ``.label`` as SemanticKITTI raw ids (uint32),
    any other suffix as a coloured point cloud through Open3D (``.ply``, ``.pcd``, ...)."""
    from .datasets import train_to_raw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in LABEL_SUFFIXES:
        train_to_raw(labels).tofile(path)
        return path
    o3d = _open3d(f"writing {path.suffix} files")
    if not o3d.io.write_point_cloud(str(path), prediction_cloud(points, labels)):
        raise ValueError(f"Open3D could not write {path} (unknown suffix?)")
    return path


def _open3d(what: str):
    return import_extra("open3d", what.capitalize())


def _from_tensor_cloud(cloud) -> np.ndarray:
    xyz = cloud.point.positions.numpy()
    intensity = cloud.point.intensity.numpy().reshape(-1) if "intensity" in cloud.point else None
    return _with_intensity(xyz, intensity)


def _with_intensity(xyz: np.ndarray, intensity) -> np.ndarray:
    out = np.zeros((xyz.shape[0], 4), dtype=np.float32)
    out[:, :3] = xyz
    if intensity is not None:
        out[:, 3] = intensity
    return out
