"""Bad inputs raise Python exceptions that name the problem; none may crash the interpreter."""

import numpy as np
import pytest
import torch

import pointsparse as ps
from pointsparse import SparseTensor, kernel_offsets, ops

from helpers import DEVICES

GOOD = [[0, 0, 0, 0], [0, 1, 0, 0]]


def coords_of(rows, device="cpu", dtype=torch.int32):
    return torch.tensor(rows, dtype=dtype, device=device)


KMAP_BUILDERS = [ops.build_kmap_hash, ops.build_kmap_sort]
DOWNSAMPLERS = [ops.downsample_coords_hash, ops.downsample_coords_sort]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("build", KMAP_BUILDERS)
@pytest.mark.parametrize("rows,dtype,error,message", [
    (GOOD, torch.float32, TypeError, "int32"),
    (GOOD, torch.int64, TypeError, "int32"),
    ([[0, 0, 0], [0, 1, 0]], torch.int32, ValueError, r"\[N, 4\]"),
    ([[0, 131072, 0, 0]], torch.int32, ValueError, "131071"),
    ([[0, 0, -131073, 0]], torch.int32, ValueError, "-131072"),
    ([[-1, 0, 0, 0]], torch.int32, ValueError, "batch index"),
    ([[512, 0, 0, 0]], torch.int32, ValueError, "batch index"),
    ([[0, 1, 2, 3], [0, 4, 5, 6], [0, 1, 2, 3]], torch.int32, ValueError, "duplicate"),
])
def test_bad_coords_raise(device, build, rows, dtype, error, message):
    coords = coords_of(rows, device, dtype)
    offsets = kernel_offsets(3).to(device)
    with pytest.raises(error, match=message):
        build(coords, coords, offsets, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("build", KMAP_BUILDERS)
def test_bad_offsets_and_symmetry_raise(device, build):
    coords = coords_of(GOOD, device)
    with pytest.raises(TypeError, match="offsets must be int32"):
        build(coords, coords, kernel_offsets(3).float().to(device), False)
    with pytest.raises(ValueError, match=r"\[K, 3\]"):
        build(coords, coords, torch.zeros((4, 2), dtype=torch.int32, device=device), False)
    with pytest.raises(ValueError, match="symmetric"):
        build(coords, coords, kernel_offsets(2).to(device), True)
    with pytest.raises(ValueError, match="symmetric"):
        build(coords, coords[:1], kernel_offsets(3).to(device), True)
    if device == "cuda":
        with pytest.raises(ValueError, match="one device"):
            build(coords, coords, kernel_offsets(3), False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("down", DOWNSAMPLERS)
def test_bad_downsample_inputs_raise(device, down):
    coords = coords_of(GOOD, device)
    with pytest.raises(ValueError, match="factor"):
        down(coords, [2, 2])
    with pytest.raises(ValueError, match="factor"):
        down(coords, [2, 0, 2])
    with pytest.raises(ValueError, match="packable range"):
        down(coords_of([[0, -131072, 0, 0]], device), [3, 3, 3])
    with pytest.raises(TypeError, match="int32"):
        down(coords.float(), [2, 2, 2])


@pytest.mark.parametrize("op", [ops.kmap_csr, ops.kmap_bitmask])
def test_bad_neighbor_tables_raise(op):
    with pytest.raises(TypeError, match="neighbors must be int32"):
        op(torch.zeros((3, 27), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[N_out, K\]"):
        op(torch.zeros(27, dtype=torch.int32))


def test_sparse_tensor_rejects_bad_construction():
    coords = coords_of(GOOD)
    with pytest.raises(TypeError, match="int32"):
        SparseTensor(torch.randn(2, 3), coords.float())
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        SparseTensor(torch.randn(2, 3), coords[:, :3])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        SparseTensor(torch.randn(3, 3), coords)
    with pytest.raises(TypeError, match="torch.Tensor"):
        SparseTensor([[0.0] * 3] * 2, coords)
    assert SparseTensor(np.zeros((2, 3)), coords).feats.dtype == torch.float64  # numpy arrays are viewed
    with pytest.raises(ValueError, match="stride"):
        SparseTensor(torch.randn(2, 3), coords, stride=0)


def test_duplicates_surface_when_building_a_map():
    x = SparseTensor(torch.randn(2, 1), coords_of([[0, 1, 1, 1], [0, 1, 1, 1]]))
    for algo in ps.KernelMapAlgo:
        with pytest.raises(ValueError, match="duplicate"):
            ps.kernel_map(x, 3, config=ps.ConvConfig(kmap=algo))


def test_sparse_quantize_and_collate_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        ps.sparse_quantize(np.zeros((4, 4), dtype=np.float32), 0.1)
    with pytest.raises(ValueError, match="positive"):
        ps.sparse_quantize(np.zeros((4, 3), dtype=np.float32), 0.0)
    with pytest.raises(ValueError, match="finite"):
        ps.sparse_quantize(np.full((4, 3), np.nan, dtype=np.float32), 0.1)
    with pytest.raises(ValueError, match="larger voxel_size"):
        ps.sparse_quantize(np.full((1, 3), 1e6, dtype=np.float32), 0.01)
    with pytest.raises(ValueError, match="at least one"):
        ps.sparse_collate([])
    two_items = SparseTensor(torch.randn(2, 1), coords_of([[0, 0, 0, 0], [1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="several batch items"):
        ps.sparse_collate([two_items])


def handed_in_map(**changes):
    """A valid map of three voxels in a row, with fields replaced."""
    coords = coords_of([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]])
    kmap = ps.build_kernel_map(coords, (1, 1, 1), 3)
    fields = {name: getattr(kmap, name) for name in
              ("neighbors", "offset_ptr", "in_idx", "out_idx", "out_coords", "out_stride", "num_in")}
    fields.update(changes)
    return ps.KernelMap(**fields)


@pytest.mark.parametrize("change,error,message", [
    (lambda m: {"in_idx": m.in_idx.clone().fill_(3)}, ValueError, r"in_idx must index rows in \[0, 3\)"),
    (lambda m: {"out_idx": m.out_idx.clone().fill_(-1)}, ValueError, "out_idx must index rows"),
    (lambda m: {"num_in": 2}, ValueError, "in_idx must index rows"),
    (lambda m: {"in_idx": m.in_idx.long()}, TypeError, "int32"),
    (lambda m: {"offset_ptr": m.offset_ptr.flip(0)}, ValueError, "offset_ptr"),
    (lambda m: {"offset_ptr": m.offset_ptr[:-1]}, ValueError, r"K \+ 1"),
    (lambda m: {"neighbors": m.neighbors[:2]}, ValueError, "neighbors must have shape"),
    (lambda m: {"neighbors": m.neighbors + 5}, ValueError, r"neighbors must index rows in \[0, 3\)"),
    # a table without pairs (they are built from it on first use) is checked on its own
    (lambda m: {"neighbors": m.neighbors + 5, "offset_ptr": None, "in_idx": None, "out_idx": None}, ValueError,
     r"neighbors must hold -1 or rows in \[0, 3\)"),
])
def test_a_handed_in_kernel_map_is_checked_once(change, error, message):
    valid = handed_in_map()
    with pytest.raises(error, match=message):
        handed_in_map(**change(valid))


def test_maps_the_library_builds_skip_the_range_read_back(monkeypatch):
    """Their indices come from the library's own ops: no aminmax (a host sync on CUDA) per map; a
    map handed in is still checked (above)."""
    calls = []
    original = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = SparseTensor(torch.randn(30, 2), coords_of([[0, i % 4, i // 4, i % 3] for i in range(30)]))
    for kernel_size, stride in ((3, 1), (1, 1), (2, 2), (3, 2)):
        ps.kernel_map(x, kernel_size, stride)
    coarse = ps.kernel_map(x, 2, 2)
    ps.kernel_map(SparseTensor(torch.randn(coarse.num_out, 2), coarse.out_coords, 2, x.cache), 2, 2, transposed=True)
    assert calls == []
    handed_in_map()
    assert len(calls) == 3  # in_idx, out_idx and the table, read back together


def test_a_tensor_cannot_join_a_cache_of_other_coordinates():
    x = SparseTensor(torch.randn(3, 2), coords_of([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]]))
    ps.kernel_map(x, 3)
    with pytest.raises(ValueError, match="holds other coordinates at tensor stride"):
        SparseTensor(torch.randn(2, 2), x.coords[:2], 1, x.cache)


def test_cpu_conv_ops_check_index_bounds_on_every_call():
    feats, weight = torch.randn(3, 2), torch.randn(1, 2, 2)
    ptr = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="in_idx must index rows"):
        ops.conv_gather_scatter(feats, weight, ptr, torch.tensor([0, 3], dtype=torch.int32),
                                torch.tensor([0, 1], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="out_idx must index rows"):
        ops.conv_fused(feats, weight, ptr, torch.tensor([0, 1], dtype=torch.int32),
                       torch.tensor([0, 2], dtype=torch.int32), 2)
