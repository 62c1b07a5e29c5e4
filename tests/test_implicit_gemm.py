"""Implicit GEMM with bitmask reordering: the accounting on hand-made masks, the reordering and the
transposed table, and the dataflow against the dense oracle and gather-GEMM-scatter, forward and
backward, for every setting; determinism across runs and thread counts."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, ImplicitGemmConfig, KernelMapAlgo, implicit_gemm_work
from pointsparse import functional as F
from pointsparse.dataflows.implicit import reordering as reordering_of
from pointsparse.implicit import reorder_rows, split_ranges
from pointsparse.testing import reference_transpose

from helpers import (DEVICES, ISAS, KINDS, assert_compiles_fullgraph, assert_gradcheck, both_dataflows,
                     check_against_oracle, kind_input, kind_weight, random_tensor, use_isa)

IMPLICIT = Dataflow.IMPLICIT_GEMM


def table(masks, K):
    """A neighbour table whose row r has neighbours (row index 0) exactly at the offsets in masks[r]."""
    return torch.tensor([[0 if k in m else -1 for k in range(K)] for m in masks], dtype=torch.int32)


# ------------------------------------------------------------------------------------------- accounting

HAND_MADE = table([{0}, {1, 2}, {0}, {1, 2}, {0, 1, 2}], 3)  # 5 rows, 3 offsets, 9 neighbours


@pytest.mark.parametrize("config,computed", [
    # tiles (r0 r1) (r2 r3) (r4): each runs {0,1,2}: 2*3 + 2*3 + 1*3
    (ImplicitGemmConfig(tile_rows=2, reorder=False), 15),
    # sorted by mask, descending: r4 {0,1,2}, r1 {1,2}, r3 {1,2}, r0 {0}, r2 {0}:
    # tiles (r4 r1) {0,1,2} -> 6, (r3 r0) {0,1,2} -> 6, (r2) {0} -> 1
    (ImplicitGemmConfig(tile_rows=2, reorder=True), 13),
    # split [0,1) and [1,3), unsorted: split 0 tiles {0},{0},{0} -> 2+2+1; split 1 {1,2} x3 -> 4+4+2
    (ImplicitGemmConfig(tile_rows=2, reorder=False, splits=2), 15),
    # split and sorted: split 0 order r0 r2 r4 r1 r3 -> tiles {0} (2), {0} (2), {} (0); split 1
    # order r1 r3 r4 r0 r2 -> tiles {1,2} (4), {1,2} (4), {} (0)
    (ImplicitGemmConfig(tile_rows=2, reorder=True, splits=2), 12),
    # one tile of all rows: 5 rows x 3 offsets
    (ImplicitGemmConfig(tile_rows=8, reorder=True), 15),
    # one row per tile: exactly the neighbours
    (ImplicitGemmConfig(tile_rows=1, reorder=False, splits=3), 9),
])
def test_accounting_on_hand_made_masks(config, computed):
    work = implicit_gemm_work(HAND_MADE, config)
    assert work.useful_rows == 9 and work.computed_rows == computed
    assert work.computed_macs(4, 8) == computed * 32 and work.useful_macs(4, 8) == 9 * 32
    assert work.redundancy == pytest.approx(1 - 9 / computed)


def brute_force_computed(neighbors, config):
    """Rows x offsets each tile runs, with the tile's offsets found from its rows one by one."""
    K = neighbors.shape[1]
    present = (neighbors >= 0).tolist()
    reordering = reorder_rows(neighbors, config)
    total = 0
    for s, (begin, end) in enumerate(split_ranges(K, config.splits)):
        order = reordering.order[s].tolist()
        for t in range(0, len(order), config.tile_rows):
            rows = order[t:t + config.tile_rows]
            needed = {k for r in rows for k in range(begin, end) if present[r][k]}
            total += len(rows) * len(needed)
    return total


@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
@pytest.mark.parametrize("tile_rows", [16, 32, 64, 128])
def test_accounting_equals_a_brute_force_count_on_a_real_map(reorder, splits, tile_rows):
    x = random_tensor(num_points=700, span=12, seed=5)
    neighbors = ps.kernel_map(x, 3).neighbors
    config = ImplicitGemmConfig(tile_rows, reorder, splits)
    work = implicit_gemm_work(neighbors, config)
    assert work.computed_rows == brute_force_computed(neighbors, config)
    assert work.useful_rows == int((neighbors >= 0).sum())


def test_reordering_cuts_redundant_work():
    x = random_tensor(num_points=2000, span=20, seed=6)
    neighbors = ps.kernel_map(x, 3).neighbors
    unsorted = implicit_gemm_work(neighbors, ImplicitGemmConfig(32, reorder=False))
    sorted_ = implicit_gemm_work(neighbors, ImplicitGemmConfig(32, reorder=True))
    split = implicit_gemm_work(neighbors, ImplicitGemmConfig(32, reorder=True, splits=3))
    assert split.computed_rows < sorted_.computed_rows < unsorted.computed_rows


@pytest.mark.parametrize("device", DEVICES)
def test_reordering_orders_are_permutations_and_masks_are_tile_ors(device):
    x = random_tensor(num_points=300, span=8, seed=7, device=device)
    neighbors = ps.kernel_map(x, 3).neighbors
    config = ImplicitGemmConfig(tile_rows=16, reorder=True, splits=2)
    reordering = reorder_rows(neighbors, config)
    present = (neighbors >= 0).cpu()
    for s, (begin, end) in enumerate(split_ranges(27, 2)):
        order = reordering.order[s].long().cpu()
        assert torch.equal(order.sort().values, torch.arange(neighbors.shape[0]))
        for t in range(reordering.tile_masks.shape[1]):
            rows = order[t * 16:(t + 1) * 16]
            bits = int(reordering.tile_masks[s, t, 0]) & 0xFFFFFFFF
            expected = sum(1 << k for k in range(begin, end) if present[rows, k].any())
            assert bits == expected


def test_bad_implicit_configs_raise():
    with pytest.raises(ValueError, match="tile_rows"):
        ImplicitGemmConfig(tile_rows=0)
    with pytest.raises(ValueError, match="at most one split per offset"):
        reorder_rows(HAND_MADE, ImplicitGemmConfig(splits=4))
    with pytest.raises(TypeError, match="ImplicitGemmConfig"):
        ConvConfig(implicit=32)


# ----------------------------------------------------------------------------------------- transposed

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_kmap_transpose_matches_a_reference(device, stride):
    x = random_tensor(num_points=200, span=7, seed=8, device=device)
    kmap = ps.kernel_map(x, 3, stride)
    transposed = ps.ops.kmap_transpose(kmap.neighbors, x.coords.shape[0])
    assert torch.equal(transposed.cpu(), reference_transpose(kmap.neighbors, x.coords.shape[0]))
    torch.library.opcheck(torch.ops.pointsparse.kmap_transpose.default, (kmap.neighbors, x.coords.shape[0]))
    with pytest.raises(ValueError, match="input rows"):
        ps.ops.kmap_transpose(kmap.neighbors, 2)


# ------------------------------------------------------------------------------------------ execution

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", list(KernelMapAlgo))
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_every_conv_kind_matches_the_oracle(device, algo, kind_name):
    kind = KINDS[kind_name]
    config = ConvConfig(algo, IMPLICIT, implicit=ImplicitGemmConfig(tile_rows=16, reorder=True, splits=1))
    check_against_oracle(kind_input(kind, device, algo), kind_weight(kind, device), kind, config)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
@pytest.mark.parametrize("tile_rows", [16, 32, 64, 128])
def test_every_setting_matches_the_oracle(device, reorder, splits, tile_rows):
    kind = KINDS["submanifold k3"]
    config = ConvConfig(dataflow=IMPLICIT, implicit=ImplicitGemmConfig(tile_rows, reorder, splits))
    check_against_oracle(kind_input(kind, device, KernelMapAlgo.SORT), kind_weight(kind, device), kind, config)


# Column blocks as in the fused forward: up to 4 vectors (AVX-512) or 2 (AVX2, SSE2) per register
# tile, as many rows as the accumulators leave (at most 8), the last block partial: channel counts on
# and off those edges, several blocks (130 float32 = 9 AVX-512 vectors, 3 blocks of 3), every ISA.
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 5), (7, 33), (33, 70), (16, 130)])
def test_cpu_register_tiles_of_every_width_match_gather_gemm_scatter(monkeypatch, isa, dtype, c_in, c_out):
    use_isa(monkeypatch, isa)
    x = random_tensor(num_points=500, channels=c_in, span=10, seed=c_in + c_out, dtype=dtype)
    weight = torch.randn(27, c_in, c_out, generator=torch.Generator().manual_seed(7), dtype=dtype) / (c_in * 3)
    results = both_dataflows(x, weight, 3, 1, configs=(
        ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER),
        ConvConfig(dataflow=IMPLICIT, implicit=ImplicitGemmConfig(tile_rows=13, reorder=True, splits=2))))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["submanifold", "strided", "transposed"])
def test_gradcheck_float64(device, kind):
    assert_gradcheck(kind, device,
                     ConvConfig(dataflow=IMPLICIT, implicit=ImplicitGemmConfig(tile_rows=4, reorder=True, splits=2)))


def scan_layer(device):
    x = random_tensor(num_points=6000, channels=32, span=40, seed=10, device=device, dtype=torch.float32)
    weight = torch.randn(27, 32, 48, device=device) / 30
    return x, weight


@pytest.mark.parametrize("device", DEVICES)
def test_bitwise_identical_across_runs_and_thread_counts(device):
    x, weight = scan_layer(device)
    config = ConvConfig(dataflow=IMPLICIT, implicit=ImplicitGemmConfig(tile_rows=32, reorder=True, splits=2))
    grad = torch.randn(x.coords.shape[0], 48, device=device)

    def run():
        feats = x.feats.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        y = F.conv3d(x.with_feats(feats), w, config=config)
        y.feats.backward(grad)
        return y.feats.detach(), feats.grad, w.grad

    threads = torch.get_num_threads()
    first = run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    again = run()
    for a, b, c in zip(first, single, again):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("device", DEVICES)
def test_implicit_gemm_under_autocast(device):
    dtype = torch.bfloat16
    x, weight = scan_layer(device)
    config = ConvConfig(dataflow=IMPLICIT)
    reference = F.conv3d(x.to(torch.float64), weight.double(), config=config).feats
    w = weight.clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = F.conv3d(x, w, config=config)
    assert y.feats.dtype == dtype
    y.feats.float().sum().backward()
    assert w.grad.dtype == torch.float32
    error = (y.feats.double() - reference).abs().max() / reference.abs().max()
    assert error < 3e-2


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="TF32 tensor cores need an sm_80+ GPU")
def test_cuda_float32_runs_on_tf32_tensor_cores_only_when_torch_allows_it():
    # As for cuBLAS: torch.backends.cuda.matmul.allow_tf32 opts float32 into TF32 (10-bit mantissa
    # products, float32 sums); by default float32 stays exact (the FMA tiles).
    x, weight = scan_layer("cuda")
    config = ConvConfig(dataflow=IMPLICIT)
    reference = F.conv3d(x.to(torch.float64), weight.double(), config=config).feats
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = F.conv3d(x, weight, config=config).feats
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = F.conv3d(x, weight, config=config).feats
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    scale = reference.abs().max()
    assert (exact.double() - reference).abs().max() / scale < 1e-5
    error = (tf32.double() - reference).abs().max() / scale
    assert 1e-6 < error < 5e-3  # rounded to TF32 (not the exact kernel), and no worse than that


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile_fullgraph(device):
    x = random_tensor(num_points=40, channels=3, seed=8, device=device, dtype=torch.float32)
    kmap = ps.kernel_map(x, 3)
    implicit = ImplicitGemmConfig(tile_rows=8, reorder=True, splits=2)
    fwd, bwd = reordering_of(kmap, implicit), reordering_of(kmap, implicit, transposed=True)
    feats = x.feats.clone().requires_grad_()
    weight = torch.randn(27, 3, 5, device=device, requires_grad=True)
    args = (feats, weight, kmap.neighbors, fwd.order, fwd.tile_masks, kmap.neighbors_t, bwd.order, bwd.tile_masks,
            kmap.offset_ptr, kmap.in_idx, kmap.out_idx, 8)
    torch.library.opcheck(torch.ops.pointsparse.conv_implicit.default, args)

    assert_compiles_fullgraph(ConvConfig(dataflow=IMPLICIT, implicit=implicit), device)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_reorderings_raise(device):
    x = random_tensor(num_points=40, channels=3, seed=8, device=device, dtype=torch.float32)
    kmap = ps.kernel_map(x, 3)
    r = reordering_of(kmap, ImplicitGemmConfig(tile_rows=8))
    weight = torch.randn(27, 3, 5, device=device)

    def call(order=r.order, masks=r.tile_masks, neighbors=kmap.neighbors):
        return ps.ops.conv_implicit(x.feats, weight, neighbors, order, masks, kmap.neighbors_t, order, masks,
                                    kmap.offset_ptr, kmap.in_idx, kmap.out_idx, 8)

    with pytest.raises(ValueError, match="tile_masks must have shape"):
        call(masks=r.tile_masks[:, :-1])
    with pytest.raises(ValueError, match="order must have shape"):
        call(order=r.order[:, :-1])
    if device == "cpu":  # CUDA asserts in the kernel instead
        with pytest.raises(ValueError, match="permutation"):
            call(order=torch.zeros_like(r.order))
        with pytest.raises(ValueError, match="neighbors must hold"):
            call(neighbors=kmap.neighbors + 100)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("splits", [1, 2, 5])
def test_multiword_masks_sort_lexicographically_descending(device, splits):
    # k5: 125 offsets, 4 mask words; every split's masks must not increase along its order.
    x = random_tensor(num_points=400, span=9, seed=12, device=device)
    neighbors = ps.kernel_map(x, 5).neighbors
    reordering = reorder_rows(neighbors, ImplicitGemmConfig(tile_rows=16, reorder=True, splits=splits))
    present = (neighbors >= 0).cpu()
    for s, (begin, end) in enumerate(split_ranges(125, splits)):
        keys = [tuple(int(v) for v in reversed(present[o, begin:end].tolist())) for o in reordering.order[s].tolist()]
        assert all(a >= b for a, b in zip(keys, keys[1:]))
    torch.library.opcheck(torch.ops.pointsparse.kmap_reorder.default, (neighbors, splits, 16, True))
