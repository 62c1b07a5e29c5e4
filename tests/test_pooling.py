"""Sparse max pooling against torch's dense max pooling, forward and gradient, for every output
rule; the spconv start value; the module's defaults and errors."""

import pytest
import torch
import torch.nn.functional as TF

import pointsparse as ps
from pointsparse import OutputRule
from pointsparse import functional as F
from pointsparse.offsets import as_triple, default_padding

from helpers import DEVICES, gather, grid_shape, random_tensor

CASES = {  # name: (kernel_size, stride, dilation, outputs, padding)
    "submanifold k3": (3, 1, 1, OutputRule.OCCUPIED, None),
    "submanifold k3 dilation 2": (3, 1, 2, OutputRule.OCCUPIED, None),
    "strided k2 s2": (2, 2, 1, OutputRule.OCCUPIED, None),
    "strided k3 s2": (3, 2, 1, OutputRule.OCCUPIED, None),
    "reached k3 s2 padding 1": (3, 2, 1, OutputRule.REACHED, 1),
    "reached k3 s1 padding 0": (3, 1, 1, OutputRule.REACHED, 0),
    "anisotropic (3, 1, 2) s (2, 1, 2)": ((3, 1, 2), (2, 1, 2), 1, OutputRule.OCCUPIED, None),
    "planar (3, 3) s (2, 2)": ((3, 3), (2, 2), 1, OutputRule.OCCUPIED, None),
}


def dense_max_pool(x, kernel_size, stride, dilation, padding, out_coords, out_stride):
    """torch's max_pool3d of x on a grid whose empty cells are -inf, at the output coordinates."""
    size, step = as_triple(kernel_size, "k", planar=1), as_triple(stride, "s", planar=1)
    dil = as_triple(dilation, "d", planar=1)
    pad = default_padding(size, dil) if padding is None else as_triple(padding, "p", minimum=0, planar=0)
    shape = grid_shape(x, margin=max(size) * max(dil))
    grid = x.dense(shape)                                                          # [B, C, X, Y, Z]
    occupied = x.with_feats(torch.ones_like(x.feats[:, :1])).dense(shape) > 0      # [B, 1, X, Y, Z]
    grid = torch.where(occupied, grid, torch.full_like(grid, float("-inf")))
    # torch's own padding may not exceed half the kernel: pad with -inf by hand.
    grid = TF.pad(grid, [p for q in reversed(pad) for p in (q, q)], value=float("-inf"))
    pooled = TF.max_pool3d(grid, size, step, 0, dil)
    return gather(pooled, out_coords, out_stride)


def planar(x):
    """x flattened onto z = 0 (2-D data), duplicates dropped."""
    coords = x.coords.clone()
    coords[:, 3] = 0
    coords, index = torch.unique(coords, dim=0, return_inverse=True)
    first = torch.full((coords.shape[0],), x.coords.shape[0], dtype=torch.long).scatter_reduce(
        0, index, torch.arange(x.coords.shape[0]), "amin")
    return ps.SparseTensor(x.feats[first], coords.int())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_max_pool_equals_torchs_dense_max_pool_with_its_gradient(device, case):
    kernel_size, stride, dilation, outputs, padding = CASES[case]
    x = random_tensor(num_points=120, channels=5, span=7, seed=4, device=device)
    if case.startswith("planar"):
        x = planar(x)
    if outputs is OutputRule.REACHED:  # the range keeps reached cells inside the grid (no negative cells)
        x = ps.SparseTensor(x.feats, x.coords, spatial_range=(7, 7, 7))
    feats = x.feats.clone().requires_grad_()
    y = F.max_pool3d(x.with_feats(feats), kernel_size, stride, dilation, outputs=outputs, padding=padding)
    dense_feats = x.feats.clone().requires_grad_()
    reference = dense_max_pool(x.with_feats(dense_feats), kernel_size, stride, dilation, padding, y.coords,
                               y.stride)
    assert torch.isfinite(reference).all()  # every output has an input in its window
    torch.testing.assert_close(y.feats, reference)
    probe = torch.randn(y.feats.shape, generator=torch.Generator().manual_seed(1), dtype=y.feats.dtype).to(device)
    (y.feats * probe).sum().backward()
    (reference * probe).sum().backward()
    torch.testing.assert_close(feats.grad, dense_feats.grad)
    if case.startswith("planar"):
        assert y.stride == (2, 2, 1) and bool((y.coords[:, 3] == 0).all())


def test_the_strided_pool_shares_the_convs_map_and_outputs():
    x = random_tensor(num_points=80, channels=4, seed=5, dtype=torch.float32)
    pooled = F.max_pool3d(x, 2, 2)
    conved = F.conv3d(x, torch.randn(8, 4, 3), kernel_size=2, stride=2)
    assert pooled.coords is conved.coords and pooled.cache is conved.cache and len(x.cache.kmaps) == 1


def test_spconvs_start_value_clamps_at_zero_and_sends_no_gradient_there():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.int32)
    feats = torch.tensor([[-1.0, 2.0], [-3.0, 2.5], [-0.5, -4.0]], requires_grad=True)
    y = F.max_pool3d(ps.SparseTensor(feats, coords), 2, 2, initial=0.0)
    assert y.feats.tolist() == [[0.0, 2.5]]
    y.feats.sum().backward()
    assert feats.grad.tolist() == [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    plain = F.max_pool3d(ps.SparseTensor(feats.detach(), coords), 2, 2)
    assert plain.feats.tolist() == [[-0.5, 2.5]]


def test_the_module_defaults_to_stride_equal_to_the_kernel_and_checks_its_geometry():
    pool = ps.nn.SparseMaxPool3d(2)
    assert pool.stride == (2, 2, 2) and "kernel_size=(2, 2, 2)" in repr(pool)
    x = random_tensor(num_points=50, channels=3, seed=6, dtype=torch.float32)
    assert torch.equal(F.max_pool3d(x, 2).feats, F.max_pool3d(x, 2, 2).feats)  # the functional's default too
    assert ps.nn.SparseMaxPool3d((3, 3), 1).kernel_size == (3, 3, 1)
    x = random_tensor(num_points=50, channels=3, seed=6, dtype=torch.float32)
    torch.testing.assert_close(pool(x).feats, F.max_pool3d(x, 2, 2).feats)
    with pytest.raises(ValueError, match="padding"):
        ps.nn.SparseMaxPool3d(3, 2, padding=0)  # a padding of its own needs spconv's rule
    with pytest.raises(TypeError, match="SparseTensor"):
        F.max_pool3d(x.feats, 2, 2)
    with pytest.raises(TypeError, match="floating point"):
        F.max_pool3d(x.with_feats(torch.ones(x.coords.shape[0], 2, dtype=torch.int64)), 2, 2)
