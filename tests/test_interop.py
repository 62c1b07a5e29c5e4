"""The ecosystem's types at the edges: numpy and cupy arrays (zero-copy), Open3D objects and files.
Open3D and cupy are optional extras, tested with the real packages where they import."""

import numpy as np
import pytest
import torch

import pointsparse as ps
from helpers import require_extra
from pointsparse import pointclouds
from pointsparse.compat.torchsparse import SparseTensor as TSTensor
from pointsparse.compat.torchsparse.utils import sparse_quantize as ts_sparse_quantize


def test_numpy_arrays_are_viewed_without_a_copy():
    feats = np.zeros((3, 2), np.float32)
    coords = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]], np.int32)
    x = ps.SparseTensor(feats, coords)
    feats[1, 1] = 5
    assert x.feats[1, 1] == 5 and x.coords.dtype == torch.int32
    with pytest.raises(TypeError, match="int32"):
        ps.SparseTensor(feats, coords.astype(np.int64))
    with pytest.raises(TypeError, match="cupy"):
        ps.sparse_quantize([[0.0, 0.0, 0.0]], 1.0)


def cupy_on_gpu():
    cupy = require_extra("cupy")
    if not torch.cuda.is_available():
        pytest.skip("cupy arrays need a CUDA device")
    return cupy


def test_cupy_arrays_stay_on_the_cuda_device_without_a_copy():
    cupy = cupy_on_gpu()
    points = cupy.random.uniform(0, 4, (200, 3)).astype(cupy.float32)
    coords, inverse = ps.sparse_quantize(points, 0.5, return_inverse=True)
    assert isinstance(coords, cupy.ndarray) and isinstance(inverse, cupy.ndarray)
    want = ps.sparse_quantize(cupy.asnumpy(points), 0.5)
    np.testing.assert_array_equal(cupy.asnumpy(coords), want)
    batch = cupy.zeros((coords.shape[0], 1), dtype=cupy.int32)
    coords4 = cupy.ascontiguousarray(cupy.concatenate([batch, coords], 1))
    feats = cupy.ones((coords.shape[0], 4), dtype=cupy.float32)
    x = ps.SparseTensor(feats, coords4)
    assert x.feats.is_cuda and x.feats.data_ptr() == feats.data.ptr        # zero-copy
    y = ps.nn.SparseConv3d(4, 8, 3).cuda()(x)
    assert y.feats.shape == (coords.shape[0], 8)
    ts = TSTensor(feats, coords4)
    assert ts.F.data_ptr() == feats.data.ptr
    assert isinstance(ts_sparse_quantize(points, 0.5), cupy.ndarray)


def open3d():
    return require_extra("open3d")


def kitti_points(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-5, 5, (n, 3)), rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)


def test_point_clouds_come_in_from_files_objects_and_arrays(tmp_path):
    o3d = open3d()
    points = kitti_points()
    points.tofile(tmp_path / "scan.bin")
    np.testing.assert_array_equal(pointclouds.read_point_cloud(tmp_path / "scan.bin"), points)
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(points[:, :3])
    cloud.point.intensity = o3d.core.Tensor(points[:, 3:])
    for suffix in (".pcd", ".ply"):
        o3d.t.io.write_point_cloud(str(tmp_path / f"scan{suffix}"), cloud)
        np.testing.assert_allclose(pointclouds.read_point_cloud(tmp_path / f"scan{suffix}"), points, rtol=1e-6)
    np.testing.assert_array_equal(pointclouds.read_point_cloud(cloud), points)
    legacy = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
    got = pointclouds.read_point_cloud(legacy)
    np.testing.assert_allclose(got[:, :3], points[:, :3], rtol=1e-6)
    assert (got[:, 3] == 0).all()                                       # no intensity in a legacy cloud
    np.testing.assert_array_equal(pointclouds.read_point_cloud(points[:, :3])[:, :3], points[:, :3])


def test_predictions_go_out_as_labels_and_coloured_clouds(tmp_path):
    o3d = open3d()
    from pointsparse.datasets import train_to_raw
    from pointsparse.datasets.colors import class_colors

    points = kitti_points()
    labels = np.arange(50) % 19
    pointclouds.write_prediction(tmp_path / "p.label", points, labels)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "p.label", dtype=np.uint32), train_to_raw(labels))
    for suffix in (".ply", ".pcd"):
        pointclouds.write_prediction(tmp_path / f"p{suffix}", points, labels)
        cloud = o3d.io.read_point_cloud(str(tmp_path / f"p{suffix}"))
        np.testing.assert_allclose(np.asarray(cloud.colors), class_colors()[labels], atol=1 / 255)


def test_bad_point_sources_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        pointclouds.read_point_cloud(tmp_path / "missing.pcd")
    with pytest.raises(TypeError, match="cannot read points"):
        pointclouds.read_point_cloud(42)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        pointclouds.read_point_cloud(np.zeros((4, 5)))
