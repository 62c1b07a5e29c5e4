"""Real SemanticKITTI scans from ../shared/data (skipped when absent)."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, KernelMapAlgo, SparseTensor

from helpers import DEVICES, load_scan, with_batch

FRAME_964 = "semantickitti/sequences/07/velodyne/000964.bin"


def test_sparse_quantize_reproduces_the_documented_floor_count():
    # The data README: 78,744 voxels with floor (the documented rule), 78,855 with round.
    coords = ps.sparse_quantize(load_scan(FRAME_964), 0.05)
    assert coords.shape == (78744, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_hash_and_sort_agree_on_a_real_scan(device, kernel_size, stride):
    coords = with_batch(ps.sparse_quantize(load_scan(FRAME_964), 0.05)).to(device)
    maps = [ps.build_kernel_map(coords, (1, 1, 1), kernel_size, stride, config=ConvConfig(kmap=algo))
            for algo in KernelMapAlgo]
    for a, b in zip(maps[:1], maps[1:]):
        torch.testing.assert_close(a.out_coords, b.out_coords)
        torch.testing.assert_close(a.neighbors, b.neighbors)
        torch.testing.assert_close(a.in_idx, b.in_idx)
        torch.testing.assert_close(a.out_idx, b.out_idx)
    # Every voxel sees itself through the centre (submanifold) and the strided outputs are unique.
    if stride == 1:
        assert maps[0].pair_counts[13].item() == coords.shape[0]
    else:
        assert torch.unique(ps.ops.pack_coords(maps[0].out_coords)).numel() == maps[0].num_out


def test_collated_real_scans_keep_batches_apart():
    first = with_batch(ps.sparse_quantize(load_scan(FRAME_964), 0.05))
    x = ps.sparse_collate([SparseTensor(torch.zeros(first.shape[0], 1), first)] * 2)
    kmap = ps.kernel_map(x, 3)
    single = ps.build_kernel_map(first, (1, 1, 1), 3)
    assert kmap.pair_counts.tolist() == (2 * single.pair_counts).tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", list(KernelMapAlgo))
def test_tiling_map_equals_the_searched_map_on_a_real_scan(device, algo):
    # build_kernel_map takes the tiling path for k2 s2 whatever the algorithm; compare it with the
    # general search over the same offsets and output coordinates.
    coords = with_batch(ps.sparse_quantize(load_scan(FRAME_964), 0.05)).to(device)
    tiling = ps.build_kernel_map(coords, (1, 1, 1), 2, 2, config=ConvConfig(kmap=algo))
    build = ps.ops.build_kmap_hash if algo is KernelMapAlgo.HASH else ps.ops.build_kmap_sort
    searched = build(coords, tiling.out_coords, ps.kernel_offsets(2).to(device), False)
    assert torch.equal(tiling.neighbors, searched)
