"""CUDA against the CPU at scale (real scans, batch 2), no host synchronisation in a cached conv,
CUDA graphs, and the review's CUDA findings. Every test here needs a GPU and skips without one;
tests/test_crosscheck.py runs the same comparisons CPU against CPU."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, SparseTensor
from pointsparse import crosscheck
from pointsparse import functional as F
from pointsparse.kmap import scaled_offsets
from pointsparse.models import minkunet18

from helpers import load_scan, with_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SCANS = ("semantickitti/sequences/07/velodyne/000964.bin", "semantickitti/sequences/00/velodyne/000000.bin")


@pytest.fixture(scope="module")
def real_batch() -> torch.Tensor:
    """int32 [N, 4]: two real scans at 0.05 m collated into batch items 0 and 1 (about 170k voxels)."""
    items = [with_batch(ps.sparse_quantize(load_scan(scan), 0.05), batch) for batch, scan in enumerate(SCANS)]
    return torch.cat(items)


def assert_all_pass(checks):
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert not failed, "\n".join(failed)


def test_kernel_maps_equal_the_cpu_maps_on_real_scans(real_batch):
    assert_all_pass(crosscheck.kmap_checks(real_batch, "cuda"))


@pytest.mark.parametrize("kind", list(crosscheck.CONV_KINDS))
def test_convs_match_the_cpu_on_real_scans(real_batch, kind):
    assert_all_pass(crosscheck.conv_checks(real_batch, "cuda", kinds=[kind]))


def cached_input(coords, channels=16):
    x = SparseTensor(torch.randn(coords.shape[0], channels, device="cuda"), coords.cuda())
    ps.kernel_map(x, 3).pairs  # warm the cache: the map and the pairs gather-GEMM-scatter runs
    return x


def test_cached_conv_forward_and_backward_never_synchronise(real_batch):
    x = cached_input(real_batch)
    weight = torch.randn(27, 16, 16, device="cuda", requires_grad=True)
    feats = x.feats.clone().requires_grad_()
    probe = torch.randn(x.coords.shape[0], 16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = F.conv3d(x.with_feats(feats), weight, kernel_size=3, config=ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER))
        y.feats.backward(probe)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert feats.grad is not None and weight.grad is not None


class NoSync:
    """A region in which any host synchronisation raises (torch.cuda.set_sync_debug_mode("error"))."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


def test_maps_on_checked_coordinates_build_without_a_sync(real_batch):
    # Issue 26: coordinates are checked once, by the first map on them; after that a submanifold map
    # at their stride, one at the coarser stride the library made, and the transposed map back (the
    # strided map's table transposed) build with no host synchronisation.
    x = SparseTensor(torch.randn(real_batch.shape[0], 4, device="cuda"), real_batch.cuda())
    ps.kernel_map(x, 3)        # checks the coordinates (syncs allowed)
    down = ps.kernel_map(x, 2, 2)  # a downsampling: its output count must reach the host
    y = F.conv3d(x, torch.randn(8, 4, 4, device="cuda"), kernel_size=2, stride=2)
    for size, stride in (((5, 5, 5), (1, 1, 1)), ((3, 3, 3), (2, 2, 2))):  # the offsets' one copy to the device
        scaled_offsets(size, (1, 1, 1), None, stride, torch.device("cuda"))
    with NoSync():
        subm = ps.kernel_map(x, 5)
        coarse = ps.kernel_map(y, 3)
        up = ps.kernel_map(y, 2, 2, transposed=True)
        table_t = down.neighbors_t
    assert not (subm.has_pairs or coarse.has_pairs or up.has_pairs)
    cpu = SparseTensor(x.feats.cpu(), x.coords.cpu())
    assert subm.neighbors.cpu().equal(ps.kernel_map(cpu, 5).neighbors)
    assert up.neighbors.cpu().equal(ps.kernel_map(cpu, 2, 2).neighbors_t) and up.neighbors.equal(table_t)
    assert coarse.neighbors.shape == (y.coords.shape[0], 27)


def test_a_fresh_minkunet_forward_syncs_once_to_check_and_once_per_downsampling(real_batch):
    # Issue 26: on new coordinates the stride-1 hash table reads their range and duplicate flag back
    # together (1), and each of the 4 downsamplings its output count (4); nothing else waits.
    from pointsparse.breakdown import count_host_syncs

    model = minkunet18(in_channels=4, num_classes=19, cr=0.5).cuda().eval()
    coords = real_batch.cuda()
    with torch.no_grad():
        model(SparseTensor(torch.randn(coords.shape[0], 4, device="cuda"), coords))  # warm-up: offsets, libraries
        fresh = SparseTensor(torch.randn(coords.shape[0], 4, device="cuda"), coords.clone())  # a new family
        assert count_host_syncs(lambda: model(fresh), "cuda") == 5


def test_a_cached_implicit_conv_trains_without_a_sync_or_pair_lists(real_batch):
    # The implicit GEMM, CUDA's default for float32: forward, input and weight gradient over the
    # tables only (no pair lists), with no host synchronisation once the map and its reorderings exist.
    x = SparseTensor(torch.randn(real_batch.shape[0], 16, device="cuda"), real_batch.cuda())
    weight = torch.randn(27, 16, 16, device="cuda", requires_grad=True)
    config = ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM)
    F.conv3d(x.with_feats(x.feats.requires_grad_()), weight, kernel_size=3, config=config).feats.sum().backward()
    feats = x.feats.detach().clone().requires_grad_()
    with NoSync():
        y = F.conv3d(x.with_feats(feats), weight, kernel_size=3, config=config)
        y.feats.backward(torch.ones_like(y.feats))
    assert not ps.kernel_map(x, 3).has_pairs
    cpu = F.conv3d(SparseTensor(feats.detach().cpu(), x.coords.cpu()), weight.detach().cpu(), kernel_size=3)
    torch.testing.assert_close(y.feats.detach().cpu(), cpu.feats, rtol=1e-3, atol=1e-3)


def test_cached_minkunet_forward_is_captured_in_a_cuda_graph(real_batch):
    torch.manual_seed(0)
    model = minkunet18(in_channels=4, num_classes=19, cr=0.5).cuda().eval()
    coords = real_batch.cuda()
    static = SparseTensor(torch.randn(coords.shape[0], 4, device="cuda"), coords)
    with torch.no_grad():
        model(static)  # builds and caches every kernel map
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(static)  # warm-up on a side stream, as CUDA graph capture requires
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(static)
        fresh = torch.randn_like(static.feats)
        static.feats.copy_(fresh)
        graph.replay()
        eager = model(SparseTensor(fresh, coords, 1, static.cache))
    torch.testing.assert_close(captured, eager)


def test_mixed_devices_raise_a_value_error_naming_the_tensor():
    x = SparseTensor(torch.randn(5, 3), torch.tensor([[0, i, 0, 0] for i in range(5)], dtype=torch.int32))
    kmap = ps.kernel_map(x, 3)
    weight = torch.randn(27, 3, 4, device="cuda")
    with pytest.raises(ValueError, match="weight"):
        torch.ops.pointsparse.conv_gather_scatter(x.feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx,
                                                  kmap.num_out, 13)
    with pytest.raises(ValueError, match="device"):
        torch.ops.pointsparse.build_kmap_hash(x.coords, x.coords.cuda(), ps.kernel_offsets(3).cuda(), False)


def test_to_cuda_on_a_cuda_tensor_keeps_its_cache():
    x = SparseTensor(torch.randn(4, 2, device="cuda"),
                     torch.tensor([[0, i, 0, 0] for i in range(4)], dtype=torch.int32, device="cuda"))
    ps.kernel_map(x, 3)
    assert x.to("cuda") is x and x.cuda() is x and x.to(torch.device("cuda", 0)) is x
    assert len(x.cuda().cache.kmaps) == 1


def test_bitmask_of_an_empty_kernel():
    neighbors = torch.zeros(7, 0, dtype=torch.int32, device="cuda")
    assert ps.ops.kmap_bitmask(neighbors).shape == (7, 0)
