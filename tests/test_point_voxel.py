"""Points and voxels: hash queries, voxelisation by mean, trilinear devoxelisation."""

import pytest
import torch

from pointsparse import SparseTensor
from pointsparse import point_voxel as pv

from helpers import DEVICES


def grid_tensor(device, stride=1, size=4, channels=2, seed=0, dtype=torch.float64):
    """Every cell of a size^3 grid at ``stride`` in two batches, with linear features
    ``f_c(p) = a_c . p + b_c`` of the cell coordinate p."""
    axis = torch.arange(size) * stride
    xyz = torch.cartesian_prod(axis, axis, axis)
    coords = torch.cat([torch.cat([torch.full((xyz.shape[0], 1), b), xyz], 1) for b in (0, 1)]).int()
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(3, channels, generator=gen, dtype=dtype), torch.randn(channels, generator=gen, dtype=dtype)
    feats = coords[:, 1:].to(dtype) @ a + b
    perm = torch.randperm(coords.shape[0], generator=gen)
    return SparseTensor(feats[perm].to(device), coords[perm].to(device), stride), a.to(device), b.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_hash_query_finds_rows_and_reports_absence(device):
    x, _, _ = grid_tensor(device)
    queries = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0], [0, 1, 2, 3], [0, 9, 0, 0], [2, 0, 0, 0],
                            [0, -300000, 0, 0], [-1, 0, 0, 0]], dtype=torch.int32, device=device)
    rows = pv.hash_query(queries, x.coords)
    assert rows.dtype == torch.int64 and rows.shape == (7,)
    for q, r in zip(queries.tolist(), rows.tolist()):
        match = (x.coords == torch.tensor(q, device=device, dtype=torch.int32)).all(1).nonzero()
        assert r == (int(match[0, 0]) if match.numel() else -1)
    shifted = pv.hash_query(queries[:2], x.coords, torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.int32))
    assert shifted.shape == (2, 2) and torch.equal(shifted[:, 0], rows[:2])
    assert shifted[0, 1] == pv.hash_query(torch.tensor([[0, 2, 2, 3]], dtype=torch.int32, device=device), x.coords)


@pytest.mark.parametrize("device", DEVICES)
def test_voxelize_averages_the_points_of_each_voxel_and_is_differentiable(device):
    x, _, _ = grid_tensor(device, stride=2)
    gen = torch.Generator().manual_seed(1)
    points = torch.cat([torch.randint(0, 2, (50, 1), generator=gen).double(),
                        torch.rand(50, 3, generator=gen, dtype=torch.float64) * 9 - 0.5], 1).to(device)
    feats = torch.randn(50, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    rows = pv.voxel_rows(points, x)
    assert bool((rows[(points[:, 1:] < 0).any(1) | (points[:, 1:] >= 8).any(1)] == -1).all())
    out = pv.voxelize(feats, rows, x.coords.shape[0])
    for r in range(x.coords.shape[0]):
        inside = rows == r
        want = feats[inside].mean(0) if bool(inside.any()) else torch.zeros(3, dtype=torch.float64, device=device)
        torch.testing.assert_close(out[r], want)
    assert torch.autograd.gradcheck(lambda f: pv.voxelize(f, rows, x.coords.shape[0]), (feats,))
    y = pv.points_to_voxels(points, feats, x)
    assert y.coords is x.coords and y.cache is x.cache


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_trilinear_devoxelize_reproduces_linear_fields(device, stride):
    x, a, b = grid_tensor(device, stride=stride)
    gen = torch.Generator().manual_seed(2)
    # Inside the grid's interior hull every corner exists, so a linear field is interpolated exactly.
    points = torch.cat([torch.randint(0, 2, (40, 1), generator=gen).double(),
                        torch.rand(40, 3, generator=gen, dtype=torch.float64) * 3 * stride], 1).to(device)
    torch.testing.assert_close(pv.devoxelize(x, points), points[:, 1:] @ a + b)
    # Nearest: the value of the voxel holding the point.
    corner = torch.floor(points[:, 1:] / stride) * stride
    torch.testing.assert_close(pv.devoxelize(x, points, nearest=True), corner @ a + b)


@pytest.mark.parametrize("device", DEVICES)
def test_devoxelize_renormalises_over_present_voxels_and_has_gradients(device):
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32, device=device)
    feats = torch.tensor([[1.0], [3.0]], dtype=torch.float64, device=device).requires_grad_()
    x = SparseTensor(feats, coords)
    points = torch.tensor([[0, 0.25, 0.5, 0.5], [0, 5.0, 5.0, 5.0]], dtype=torch.float64, device=device)
    rows, weights = pv.trilinear_weights(points, x)
    assert rows.shape == (2, 8) and bool((rows[1] == -1).all()) and float(weights[1].abs().sum()) == 0
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0, dtype=torch.float64, device=device),
                               atol=1e-7, rtol=0)
    out = pv.devoxelize(x, points)
    torch.testing.assert_close(out[:, 0], torch.tensor([1.5, 0.0], dtype=torch.float64, device=device), atol=1e-7,
                               rtol=0)  # 0.75 * 1 + 0.25 * 3 along x; nothing around the far point
    assert torch.autograd.gradcheck(lambda f: pv.devoxelize(x.with_feats(f), points), (feats,))


def test_bad_points_raise_clear_errors():
    x, _, _ = grid_tensor("cpu")
    with pytest.raises(TypeError, match="floating-point"):
        pv.devoxelize(x, torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[P, 4\]"):
        pv.voxel_rows(torch.zeros(3, 3), x)
    with pytest.raises(ValueError, match="rows"):
        pv.voxelize(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), 4)
