"""Kernel maps: hash, sort and the brute-force reference agree on every layout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pointsparse as ps
from pointsparse import ConvConfig, KernelMapAlgo, SparseTensor, kernel_offsets, ops
from pointsparse.testing import (reference_bitmask, reference_csr, reference_downsample,
                                 reference_neighbors)

from helpers import DEVICES

ALGOS = list(KernelMapAlgo)


@st.composite
def coord_sets(draw, max_points=40, span=5):
    """Unique int32 [N, 4] coords over up to 3 ragged batches, around a drawn origin."""
    num_batches = draw(st.integers(1, 3))
    origin = draw(st.sampled_from([0, -7, 1000]))
    axis = st.integers(origin - span, origin + span)
    rows = draw(st.lists(st.tuples(st.integers(0, num_batches - 1), axis, axis, axis),
                         max_size=max_points, unique=True))
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 4)


def scaled(coords: torch.Tensor, tensor_stride: int) -> torch.Tensor:
    return torch.cat([coords[:, :1], coords[:, 1:] * tensor_stride], 1)


def assert_layouts_match_reference(kmap: ps.KernelMap, expected_neighbors: torch.Tensor):
    torch.testing.assert_close(kmap.neighbors.cpu(), expected_neighbors)
    for got, want in zip((kmap.offset_ptr, kmap.in_idx, kmap.out_idx), reference_csr(expected_neighbors)):
        torch.testing.assert_close(got.cpu(), want)
    torch.testing.assert_close(kmap.bitmask.cpu(), reference_bitmask(expected_neighbors))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ALGOS)
@settings(max_examples=40, deadline=None)
@given(coords=coord_sets(), kernel_size=st.sampled_from([1, 2, 3, 5]),
       stride=st.sampled_from([1, 2, 3]), dilation=st.sampled_from([1, 2]),
       tensor_stride=st.sampled_from([1, 2]))
def test_kernel_map_matches_reference(device, algo, coords, kernel_size, stride, dilation, tensor_stride):
    t = tensor_stride
    in_coords = scaled(coords, t)
    kmap = ps.build_kernel_map(in_coords.to(device), (t, t, t), kernel_size, stride, dilation,
                               ConvConfig(kmap=algo))
    factor = (t * stride,) * 3
    expected_out = in_coords if stride == 1 else reference_downsample(in_coords, factor)
    torch.testing.assert_close(kmap.out_coords.cpu(), expected_out)
    assert kmap.out_stride == factor
    offsets = kernel_offsets(kernel_size, dilation) * t
    assert_layouts_match_reference(kmap, reference_neighbors(in_coords, expected_out, offsets))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@settings(max_examples=25, deadline=None)
@given(coords=coord_sets(), dilation=st.sampled_from([1, 2]))
def test_symmetric_build_equals_full_build(device, kernel_size, coords, dilation):
    coords = coords.to(device)
    offsets = kernel_offsets(kernel_size, dilation).to(device)
    full = ops.build_kmap_hash(coords, coords, offsets, False)
    for build in (ops.build_kmap_hash, ops.build_kmap_sort):
        torch.testing.assert_close(build(coords, coords, offsets, True), full)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(coords=coord_sets(), factor=st.tuples(*[st.integers(1, 4)] * 3))
def test_downsample_hash_sort_reference_agree(device, coords, factor):
    expected = reference_downsample(coords, factor)
    for down in (ops.downsample_coords_hash, ops.downsample_coords_sort):
        torch.testing.assert_close(down(coords.to(device), factor).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(coords=coord_sets(span=9), size=st.tuples(*[st.sampled_from([1, 2, 4])] * 3),
       tensor_stride=st.tuples(*[st.integers(1, 3)] * 3))
def test_tiling_map_matches_reference(device, coords, size, tensor_stride):
    # Coordinates are not scaled: with a tensor stride > 1 some lie off its grid and match nothing.
    out = reference_downsample(coords, tuple(k * t for k, t in zip(size, tensor_stride)))
    offsets = kernel_offsets(size) * torch.tensor(tensor_stride, dtype=torch.int32)
    expected = reference_neighbors(coords, out, offsets)
    got = ops.kmap_tiling(coords.to(device), out.to(device), size, tensor_stride)
    torch.testing.assert_close(got.cpu(), expected)
    fused_out, fused = ops.downsample_tiling(coords.to(device), size, tensor_stride)
    torch.testing.assert_close(fused_out.cpu(), out)
    torch.testing.assert_close(fused.cpu(), expected)


@pytest.mark.parametrize("origin,span", [(0, 60), (-3000, 4000), (100000, 50)])
@pytest.mark.parametrize("shuffled", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
def test_sort_and_hash_agree_on_large_inputs(origin, span, shuffled, threads):
    # Thousands of rows take the sort path's radix sort (small inputs: ATen's), over key ranges of a
    # few to many bits, negative coordinates and ragged batches; shuffled rows test its stability
    # through the first-occurrence numbering of downsampled outputs, rows in key order (as a
    # voxelised scan's) the path that skips the sort. At 3 threads the radix passes run in 3 parts.
    gen = torch.Generator().manual_seed(span)
    coords = torch.cat([torch.randint(0, 3, (60000, 1), generator=gen),
                        torch.randint(origin - span, origin + span, (60000, 3), generator=gen)], 1)
    coords = torch.unique(coords, dim=0).int()  # sorted by (batch, x, y, z)
    if shuffled:
        coords = coords[torch.randperm(coords.shape[0], generator=gen)]
    assert coords.shape[0] > 3 * 16384
    offsets = kernel_offsets(3)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for symmetric in (False, True):
            torch.testing.assert_close(ops.build_kmap_sort(coords, coords, offsets, symmetric),
                                       ops.build_kmap_hash(coords, coords, offsets, symmetric))
        down = ops.downsample_coords_sort(coords, (2, 2, 2))
        torch.testing.assert_close(down, ops.downsample_coords_hash(coords, (2, 2, 2)))
        torch.testing.assert_close(ops.build_kmap_sort(coords, down, offsets, False),
                                   ops.build_kmap_hash(coords, down, offsets, False))
        tiled_out, tiled = ops.downsample_tiling(coords, (2, 2, 2), (1, 1, 1))
        torch.testing.assert_close(tiled_out, down)
        torch.testing.assert_close(tiled, ops.kmap_tiling(coords, down, (2, 2, 2), (1, 1, 1)))
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("isa", ["avx512", "baseline"])
@pytest.mark.parametrize("num_offsets", [1, 8, 27, 64, 65, 125])
def test_csr_layout_matches_reference_on_large_tables(monkeypatch, isa, num_offsets):
    # Many row chunks (the parallel count and write passes), K from one to two 64-bit words of
    # presence bits, read with AVX-512 compares or the portable loop (POINTSPARSE_CPU_ISA caps it).
    monkeypatch.setenv("POINTSPARSE_CPU_ISA", isa)
    gen = torch.Generator().manual_seed(num_offsets)
    rows = 20000
    neighbors = torch.randint(0, rows, (rows, num_offsets), generator=gen, dtype=torch.int32)
    neighbors[torch.rand(rows, num_offsets, generator=gen) < 0.8] = -1
    neighbors[:, -1] = torch.where(torch.arange(rows) % 3 == 0, -1, neighbors[:, -1])  # the last lane
    for got, want in zip(ops.kmap_csr(neighbors), reference_csr(neighbors)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_tiling_map_rejects_bad_inputs(device):
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 3, 2, 2]], dtype=torch.int32, device=device)
    out = ops.downsample_coords_hash(coords, [2, 2, 2])
    with pytest.raises(ValueError, match="even sizes"):
        ops.kmap_tiling(coords, out, (3, 3, 3), (1, 1, 1))
    with pytest.raises(ValueError, match="cell corners"):
        ops.kmap_tiling(coords, out + torch.tensor([0, 1, 0, 0], dtype=torch.int32, device=device),
                        (2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="in_coords holds duplicate"):
        ops.kmap_tiling(torch.cat([coords, coords[:1]]), out, (2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="out_coords holds duplicate"):
        ops.kmap_tiling(coords, torch.cat([out, out[:1]]), (2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="tensor_stride"):
        ops.kmap_tiling(coords, out, (2, 2, 2), (1, 0, 1))
    with pytest.raises(ValueError, match="coords holds duplicate"):
        ops.downsample_tiling(torch.cat([coords, coords[:1]]), (2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="even sizes"):
        ops.downsample_tiling(coords, (2, 3, 2), (1, 1, 1))
    empty_out, empty = ops.downsample_tiling(coords[:0], (2, 2, 2), (1, 1, 1))
    assert empty_out.shape == (0, 4) and empty.shape == (0, 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ALGOS)
def test_empty_input_gives_empty_maps(device, algo):
    empty = torch.empty((0, 4), dtype=torch.int32, device=device)
    for stride in (1, 2):
        kmap = ps.build_kernel_map(empty, (1, 1, 1), 3, stride, config=ConvConfig(kmap=algo))
        assert kmap.neighbors.shape == (0, 27) and kmap.in_idx.numel() == 0
        assert kmap.offset_ptr.tolist() == [0] * 28 and kmap.bitmask.shape == (0, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ALGOS)
def test_one_point_only_sees_itself(device, algo):
    point = torch.tensor([[0, -3, 4, 5]], dtype=torch.int32, device=device)
    kmap = ps.build_kernel_map(point, (1, 1, 1), 3, config=ConvConfig(kmap=algo))
    expected = torch.full((1, 27), -1, dtype=torch.int32)
    expected[0, 13] = 0
    torch.testing.assert_close(kmap.neighbors.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ALGOS)
def test_range_edges_do_not_alias(device, algo):
    # x = 131071 plus one would carry into the batch bits and alias (1, -131072, 0, 0) if the
    # shifted key were not range-checked.
    low, high = ops.COORD_RANGE
    coords = torch.tensor([[0, high, 0, 0], [1, low, 0, 0], [0, high, high, high], [1, low, low, low]],
                          dtype=torch.int32, device=device)
    offsets = kernel_offsets(3).to(device)
    expected = reference_neighbors(coords.cpu(), coords.cpu(), offsets.cpu())
    for build in (ops.build_kmap_hash, ops.build_kmap_sort):
        for symmetric in (True, False):
            torch.testing.assert_close(build(coords, coords, offsets, symmetric).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("kernel_size,stride", [(2, 2), (3, 2), (3, 3)])
@settings(max_examples=20, deadline=None)
@given(coords=coord_sets())
def test_transposed_map_swaps_the_strided_map(device, algo, kernel_size, stride, coords):
    config = ConvConfig(kmap=algo)
    fine = SparseTensor(torch.zeros(coords.shape[0], 1, device=device), coords.to(device))
    down = ps.kernel_map(fine, kernel_size, stride, config=config)
    coarse = SparseTensor(torch.zeros(down.num_out, 1, device=device), down.out_coords,
                          stride, fine.cache)
    up = ps.kernel_map(coarse, kernel_size, stride, transposed=True, config=config)
    torch.testing.assert_close(up.out_coords, fine.coords)
    assert up.out_stride == (1, 1, 1)
    offsets = kernel_offsets(kernel_size)
    expected = reference_neighbors(down.out_coords.cpu(), coords, -offsets)
    assert_layouts_match_reference(up, expected)


def test_cache_is_shared_by_derived_tensors_and_reused():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 0]], dtype=torch.int32)
    x = SparseTensor(torch.randn(3, 2), coords)
    kmap = ps.kernel_map(x, 3)
    y = x.with_feats(torch.randn(3, 5))
    assert y.cache is x.cache and ps.kernel_map(y, 3) is kmap
    assert ps.kernel_map(SparseTensor(x.feats, coords), 3) is not kmap  # a new tensor, a new cache


def test_strided_conv_reuses_cached_coarse_coordinates():
    coords = torch.tensor([[0, 0, 0, 0], [0, 3, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.randn(3, 2), coords)
    by_k2 = ps.kernel_map(x, 2, 2)
    by_k3 = ps.kernel_map(x, 3, 2)
    assert by_k3.out_coords is by_k2.out_coords


def test_transposed_without_the_strided_map_raises():
    coords = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0]], dtype=torch.int32)
    coarse = SparseTensor(torch.randn(2, 2), coords, stride=2)
    with pytest.raises(ValueError, match="coordinates at stride"):
        ps.kernel_map(coarse, 2, 2, transposed=True)
    with pytest.raises(ValueError, match="divisible"):
        ps.kernel_map(coarse, 2, 4, transposed=True)


def test_offsets_are_made_once_per_geometry_and_device():
    from pointsparse.kmap import scaled_offsets

    first = scaled_offsets((3, 3, 3), (1, 1, 1), None, (2, 2, 2), torch.device("cpu"))
    assert scaled_offsets((3, 3, 3), (1, 1, 1), None, (2, 2, 2), torch.device("cpu")) is first
    assert torch.equal(first, ps.kernel_offsets(3) * 2)
    key = ps.KernelMapKey.of((2, 2, 2), 2, 2, transposed=True)
    assert torch.equal(key.offsets(torch.device("cpu")), ps.kernel_offsets(2))  # the finer side's units


def test_identity_and_tiling_maps_make_no_offsets():
    # On CUDA the first use of a geometry copies its offsets to the device; maps that read none skip it.
    from pointsparse.kmap import _scaled_offsets_memo

    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 1, 0]], dtype=torch.int32)
    def calls():
        info = _scaled_offsets_memo.cache_info()
        return info.hits + info.misses

    before = calls()
    ps.build_kernel_map(coords, (1, 1, 1), 1)
    ps.build_kernel_map(coords, (1, 1, 1), 2, 2)
    assert calls() == before
    ps.build_kernel_map(coords, (1, 1, 1), 3)
    assert calls() == before + 1


def test_a_key_is_made_once_per_geometry_and_the_memo_takes_no_look_alike():
    # Every conv call asks for its key: the memo serves it, normalised ([3, 3, 3] is (3, 3, 3)),
    # without taking True or 3.0 for the equal int (the memo's keys compare equal for those).
    key = ps.KernelMapKey.of((1, 1, 1), 3, (2, 2, 1))
    assert ps.KernelMapKey.of((1, 1, 1), 3, (2, 2, 1)) is key
    ps.KernelMapKey.of((1, 1, 1), (3, 3, 3), 1), ps.KernelMapKey.of((1, 1, 1), 1, 1)  # memo the int look-alikes
    assert ps.KernelMapKey.of((1, 1, 1), [3, 3, 3], [2, 2, 1]) == key
    assert ps.KernelMapKey.of((1, 1, 1), 3, [2, 2]) == key  # 2-D: z of unit stride
    for size, stride in (((3, 3, 3.0), 1), (3, (2, 2, True)), (True, 1), (3, 1.0)):
        with pytest.raises(TypeError, match="kernel_size|stride"):
            ps.KernelMapKey.of((1, 1, 1), size, stride)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ps.KernelMapKey.of((1, 1, 1), 3, (2, 2, 0))
    with pytest.raises(TypeError, match="outputs must be an OutputRule"):
        ps.KernelMapKey.of((1, 1, 1), 3, 1, outputs=["occupied"])
    assert ps.functional.identity_offset(3, 1, False) == 13 and ps.functional.identity_offset((3, 3, 1), 1, False) == 4
    assert ps.functional.identity_offset(3, 2, False) == -1 and ps.functional.identity_offset(2, 1, False) == -1
    with pytest.raises(TypeError, match="kernel_size"):
        ps.functional.identity_offset((3, 3, 3.0), 1, False)


def test_the_default_algorithm_is_the_faster_per_device_and_round_trips():
    from pointsparse.config import default_kmap_algo
    from pointsparse.strategies import config_from_dict, config_to_dict

    assert default_kmap_algo("cpu") is ps.KernelMapAlgo.SORT and default_kmap_algo("cuda:0") is ps.KernelMapAlgo.HASH
    assert ps.ConvConfig().kmap is None and config_from_dict(config_to_dict(ps.ConvConfig())) == ps.ConvConfig()
    with pytest.raises(TypeError, match="KernelMapAlgo or None"):
        ps.ConvConfig(kmap="hash")
