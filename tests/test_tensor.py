"""SparseTensor, sparse_quantize and sparse_collate."""

import numpy as np
import pytest
import torch

import pointsparse as ps
from pointsparse import SparseTensor

from helpers import DEVICES


def sample_tensor(device="cpu"):
    coords = torch.tensor([[0, 0, 0, 0], [0, 2, 4, 2], [1, 2, 0, 6]], dtype=torch.int32, device=device)
    return SparseTensor(torch.arange(6, dtype=torch.float32, device=device).reshape(3, 2), coords, stride=2)


def test_attributes_and_with_feats():
    x = sample_tensor()
    assert x.stride == (2, 2, 2) and x.num_channels == 2 and x.batch_size == 2
    y = x.with_feats(torch.ones(3, 7))
    assert y.coords is x.coords and y.stride == x.stride and y.cache is x.cache and y.num_channels == 7


def test_to_dtype_keeps_the_cache():
    x = sample_tensor()
    y = x.to(torch.float64)
    assert y.feats.dtype == torch.float64 and y.cache is x.cache


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_moves_coords_and_feats(device):
    x = sample_tensor().to(device)
    assert x.coords.device.type == device and x.feats.device.type == device
    assert ps.kernel_map(x, 3).neighbors.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_dense_places_each_voxel_at_coordinate_over_stride(device):
    x = sample_tensor(device)
    grid = x.dense()
    assert grid.shape == (2, 2, 2, 3, 4)
    assert grid[0, :, 1, 2, 1].tolist() == [2.0, 3.0]
    assert grid[1, :, 1, 0, 3].tolist() == [4.0, 5.0]
    assert grid.abs().sum().item() == sum(range(6))
    shifted = x.dense((3, 4, 5), origin=(-2, 0, -2))
    assert shifted[0, :, 2, 2, 2].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="outside the dense grid"):
        x.dense((1, 1, 1))
    with pytest.raises(ValueError, match="multiples"):
        x.dense(origin=(1, 0, 0))


@pytest.mark.parametrize("as_numpy", [True, False])
def test_sparse_quantize_floors_and_returns_index_and_inverse(as_numpy):
    points = np.array([[0.01, 0.02, 0.03], [-0.01, 0.0, 0.0], [0.04, 0.01, 0.0], [0.12, 0.0, -0.06]],
                      dtype=np.float32)
    data = points if as_numpy else torch.from_numpy(points)
    coords, index, inverse = ps.sparse_quantize(data, 0.05, return_index=True, return_inverse=True)
    assert isinstance(coords, np.ndarray if as_numpy else torch.Tensor)
    coords, index, inverse = (np.asarray(a) for a in (coords, index, inverse))
    assert coords.tolist() == [[-1, 0, 0], [0, 0, 0], [2, 0, -2]]
    assert index.tolist() == [1, 0, 3]
    assert inverse.tolist() == [1, 0, 1, 2]
    assert coords.dtype == np.int32


def test_sparse_quantize_accepts_per_axis_voxel_size():
    coords = ps.sparse_quantize(np.array([[1.0, 1.0, 1.0]], dtype=np.float32), (0.5, 0.25, 1.0))
    assert coords.tolist() == [[2, 4, 1]]


def test_sparse_collate_prepends_batch_index():
    a = SparseTensor(torch.ones(2, 3), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32))
    b = SparseTensor(torch.zeros(1, 3), torch.tensor([[0, 5, 5, 5]], dtype=torch.int32))
    batch = ps.sparse_collate([a, b])
    assert batch.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 5, 5, 5]]
    assert batch.feats.shape == (3, 3) and batch.batch_size == 2


@pytest.mark.parametrize("device", DEVICES)
def test_to_the_device_a_tensor_is_on_keeps_it_and_its_cache(device):
    x = SparseTensor(torch.randn(3, 2, device=device),
                     torch.tensor([[0, i, 0, 0] for i in range(3)], dtype=torch.int32, device=device))
    ps.kernel_map(x, 3)
    index = 0 if device == "cuda" else None
    for target in (device, torch.device(device), torch.device(device, index) if index is not None else "cpu"):
        assert x.to(target) is x
    assert len(x.to(device).cache.kmaps) == 1
