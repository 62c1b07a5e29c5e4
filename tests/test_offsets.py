"""The one offset order every weight uses."""

import pytest
import torch

import pointsparse as ps
from pointsparse import SparseTensor, kernel_offsets


def test_odd_kernel_order_is_centred_with_x_fastest():
    offsets = kernel_offsets(3)
    assert offsets.shape == (27, 3) and offsets.dtype == torch.int32
    assert offsets[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert offsets[13].tolist() == [0, 0, 0]
    torch.testing.assert_close(offsets.flip(0), -offsets)  # offset K-1-k is -offset k


def test_even_kernel_order_runs_from_zero():
    assert kernel_offsets(2).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                          [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]


def test_dilation_and_per_axis_sizes():
    offsets = kernel_offsets((3, 1, 2), dilation=(2, 1, 3))
    assert offsets.tolist() == [[-2, 0, 0], [0, 0, 0], [2, 0, 0], [-2, 0, 3], [0, 0, 3], [2, 0, 3]]


@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_neighbour_k_sits_at_offset_k(kernel_size):
    # A one-hot weight at offset k shifts the input by offset k: output o reads the input at
    # coords[o] + offsets[k] * tensor_stride.
    grid = torch.stack(torch.meshgrid(*[torch.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(grid.shape[0], 1, dtype=torch.int64), grid * 2], 1).int()
    x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, stride=2)
    kmap = ps.kernel_map(x, kernel_size)
    position = {tuple(c): i for i, c in enumerate(coords.tolist())}
    for k, (dx, dy, dz) in enumerate(kernel_offsets(kernel_size).tolist()):
        for o, (b, x0, y0, z0) in enumerate(coords.tolist()):
            want = position.get((b, x0 + 2 * dx, y0 + 2 * dy, z0 + 2 * dz), -1)
            assert kmap.neighbors[o, k].item() == want


@pytest.mark.parametrize("bad", [0, -1, (3,), (3, 3, 3, 3), (3, 3, 0), (3, 0)])
def test_bad_kernel_sizes_raise(bad):
    with pytest.raises((ValueError, TypeError), match="kernel_size"):
        kernel_offsets(bad)


def test_two_ints_are_a_2d_kernel_with_a_unit_third_axis():
    assert torch.equal(kernel_offsets((3, 3)), kernel_offsets((3, 3, 1)))
    assert torch.equal(kernel_offsets((3, 3), padding=(1, 0)), kernel_offsets((3, 3, 1), padding=(1, 0, 0)))
