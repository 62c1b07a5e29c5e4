"""torch.library.opcheck on every op: schema, fake kernels, dispatch under tracing."""

import pytest
import torch

from pointsparse import kernel_offsets

from helpers import DEVICES

COORDS = [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -1], [1, -2, 3, 4], [1, -1, 3, 4], [0, 5, 5, 5]]


def sample_coords(device):
    return torch.tensor(COORDS, dtype=torch.int32, device=device)


def op_cases(device):
    coords = sample_coords(device)
    offsets = kernel_offsets(3).to(device)
    neighbors = torch.ops.pointsparse.build_kmap_hash(coords, coords, offsets, True)
    coarse = torch.ops.pointsparse.downsample_coords_hash(coords, [2, 2, 2])
    ops = torch.ops.pointsparse
    return [
        (ops.pack_coords.default, (coords,)),
        (ops.downsample_coords_hash.default, (coords, [2, 2, 2])),
        (ops.downsample_coords_sort.default, (coords, [2, 3, 1])),
        (ops.build_kmap_hash.default, (coords, coords, offsets, True)),
        (ops.build_kmap_sort.default, (coords, coords, offsets, True)),
        (ops.build_kmap_hash.default, (coords, coarse, kernel_offsets(2).to(device), False)),
        (ops.build_kmap_sort.default, (coords, coarse, kernel_offsets(2).to(device), False)),
        (ops.kmap_csr.default, (neighbors,)),
        (ops.kmap_bitmask.default, (neighbors,)),
        (ops.kmap_tiling.default, (coords, coarse, [2, 2, 2], [1, 1, 1])),
        (ops.downsample_tiling.default, (coords, [2, 2, 1], [1, 1, 2])),
        (ops.coords_hash_table.default, (coords,)),
        (ops.build_kmap_hash.default, (coords, coords, offsets, True, True, *ops.coords_hash_table(coords))),
        (ops.kmap_tiling.default, (coords, coarse, [2, 2, 2], [1, 1, 1], True, *ops.coords_hash_table(coarse))),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(14))
def test_opcheck(device, case):
    op, args = op_cases(device)[case]
    torch.library.opcheck(op, args)
