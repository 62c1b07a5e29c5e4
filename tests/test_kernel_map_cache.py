"""Kernel maps bound to their coordinates: a cache never serves a map built on other coordinates,
and a SparseTensor's coordinates, stride and cache cannot be rebound."""

import copy
import pickle

import pytest
import torch

import pointsparse as ps
from pointsparse.functional import conv3d
from pointsparse import SparseTensor
from pointsparse.kmap import cached_kernel_map

from helpers import DEVICES, dense_conv

ONES_K3 = torch.ones(27, 1, 1)  # [K, C_in, C_out]: each output sums its occupied neighbours


def line(xs, device="cpu"):
    """Voxels (0, x, 0, 0) for each x, int32 [N, 4]."""
    return torch.tensor([[0, x, 0, 0] for x in xs], dtype=torch.int32, device=device)


def conv_sum(x: SparseTensor, **kwargs) -> SparseTensor:
    return conv3d(x, ONES_K3.to(x.feats.device), kernel_size=3, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_the_reproduction_foreign_coordinates_with_a_cache_raise_instead_of_reusing_the_old_map(device):
    """review-code-6060b1a §0: x at c1 = (0, 1, 5); a tensor at c2 = (0, 1, 2) built with x's cache
    was convolved over c1's map: [2, 2, 1] at c1 instead of [2, 3, 2] at c2."""
    c1, c2 = line([0, 1, 5], device), line([0, 1, 2], device)
    x = SparseTensor(torch.ones(3, 1, device=device), c1)
    assert conv_sum(x).feats.flatten().tolist() == [2, 2, 1]
    with pytest.raises(ValueError, match="holds other coordinates at tensor stride"):
        SparseTensor(torch.ones(3, 1, device=device), c2, cache=x.cache)
    own = conv_sum(SparseTensor(torch.ones(3, 1, device=device), c2))  # without cache=: its own maps
    assert own.coords.tolist() == c2.tolist() and own.feats.flatten().tolist() == [2, 3, 2]


@pytest.mark.parametrize("variant", ["same rows, other values", "other order", "fewer rows", "other batch"])
def test_coordinates_other_than_the_cached_ones_at_a_stride_raise(variant):
    c1 = line([0, 1, 5])
    c2 = {"same rows, other values": line([0, 1, 6]), "other order": c1[[2, 0, 1]],
          "fewer rows": c1[:2], "other batch": c1 + torch.tensor([1, 0, 0, 0], dtype=torch.int32)}[variant]
    x = SparseTensor(torch.ones(3, 1), c1)
    conv_sum(x)
    with pytest.raises(ValueError, match="holds other coordinates"):
        SparseTensor(torch.ones(c2.shape[0], 1), c2, cache=x.cache)
    with pytest.raises(ValueError, match="holds other coordinates"):  # the map lookup checks as well
        cached_kernel_map(x.cache, c2, x.stride, 3)


def test_equal_coordinates_in_another_tensor_share_the_cache_and_its_maps():
    c1 = line([0, 1, 5])
    x = SparseTensor(torch.ones(3, 1), c1)
    conv_sum(x)
    y = SparseTensor(torch.full((3, 1), 2.0), c1.clone(), cache=x.cache)
    assert y.cache is x.cache and len(x.cache.kmaps) == 1
    assert conv_sum(y).feats.flatten().tolist() == [4, 4, 2] and len(x.cache.kmaps) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_coordinates_at_a_new_stride_join_the_family_without_becoming_a_strided_convs_outputs(device):
    """c2 at stride 2, a stride the cache does not hold yet: its convs are its own, and a strided
    conv of the finer tensor still outputs the cells downsampling gives, not c2."""
    c1 = line([0, 1, 2, 5], device)
    x = SparseTensor(torch.ones(4, 1, device=device), c1)
    c2 = line([0, 2, 8], device)  # floor(c1 / 2) * 2 would be (0, 2, 4)
    coarse = SparseTensor(torch.ones(3, 1, device=device), c2, stride=2, cache=x.cache)
    assert conv_sum(coarse).feats.flatten().tolist() == [2, 2, 1]
    down = conv3d(x, torch.ones(8, 1, 1, device=device), kernel_size=2, stride=2)
    assert down.coords[:, 1].tolist() == [0, 2, 4] and down.feats.flatten().tolist() == [2, 1, 1]
    expected = dense_conv(x, torch.ones(8, 1, 1, device=device), (2, 2, 2), (2, 2, 2), (1, 1, 1), False,
                          down.coords, (2, 2, 2))
    assert torch.equal(down.feats, expected)
    with pytest.raises(ValueError, match="not the .* outputs of the strided conv it inverts"):
        conv3d(coarse, torch.ones(8, 1, 1, device=device), kernel_size=2, stride=2, transposed=True)


def test_a_transposed_conv_from_the_strided_convs_own_outputs_returns_to_the_finer_coordinates():
    c1 = line([0, 1, 2, 5])
    x = SparseTensor(torch.ones(4, 1), c1)
    down = conv3d(x, torch.ones(8, 1, 1), kernel_size=2, stride=2)
    same = SparseTensor(down.feats, down.coords.clone(), stride=2, cache=x.cache)  # equal rows: accepted
    up = conv3d(same, torch.ones(8, 1, 1), kernel_size=2, stride=2, transposed=True)
    assert up.coords is x.coords and up.feats.flatten().tolist() == [2, 2, 1, 1]


def test_coordinates_stride_cache_and_range_cannot_be_rebound():
    x = SparseTensor(torch.ones(3, 1), line([0, 1, 5]), spatial_range=(8, 8, 8))
    for name, value in (("coords", line([0, 1, 2])), ("stride", (2, 2, 2)), ("cache", ps.KernelMapCache()),
                        ("spatial_range", (4, 4, 4)), ("anything_else", 1), ("_coords", line([0, 1, 2]))):
        with pytest.raises(AttributeError, match="cannot be set"):
            setattr(x, name, value)
    assert x.coords[:, 1].tolist() == [0, 1, 5] and x.stride == (1, 1, 1)


def test_features_can_be_replaced_by_features_of_the_same_rows():
    x = SparseTensor(torch.ones(3, 1), line([0, 1, 5]))
    x.feats = torch.full((3, 2), 3.0)
    assert x.num_channels == 2 and conv_sum(x.with_feats(x.feats[:, :1])).feats.flatten().tolist() == [6, 6, 3]
    with pytest.raises(ValueError, match="rows of coords"):
        x.feats = torch.ones(4, 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        x.feats = [[1.0]] * 3


def test_a_cache_argument_of_another_type_is_refused():
    with pytest.raises(TypeError, match="KernelMapCache"):
        SparseTensor(torch.ones(3, 1), line([0, 1, 5]), cache={})


def test_a_tensor_pickles_and_copies_with_its_family():
    x = SparseTensor(torch.ones(3, 1), line([0, 1, 5]), spatial_range=(8, 8, 8))
    conv_sum(x)
    for twin in (pickle.loads(pickle.dumps(x)), copy.copy(x), copy.deepcopy(x)):
        assert torch.equal(twin.coords, x.coords) and twin.stride == x.stride and twin.spatial_range == (8, 8, 8)
        assert twin.cache.coords[(1, 1, 1)] is twin.coords and len(twin.cache.kmaps) == 1
        assert conv_sum(twin).feats.flatten().tolist() == [2, 2, 1]
    assert copy.copy(x).cache is x.cache and copy.deepcopy(x).cache is not x.cache


class _Scans(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return SparseTensor(torch.full((3, 1), float(index)), line([0, 1, 5 + index]))


def test_data_loader_workers_hand_tensors_back():
    loader = torch.utils.data.DataLoader(_Scans(), batch_size=None, num_workers=1)
    got = list(loader)
    assert [t.coords[:, 1].tolist() for t in got] == [[0, 1, 5], [0, 1, 6]]
    assert conv_sum(got[1]).feats.flatten().tolist() == [2, 2, 1]


def test_coordinates_edited_in_place_after_their_maps_were_built_raise():
    x = SparseTensor(torch.ones(3, 1), line([0, 1, 5]))
    conv_sum(x)
    x.coords[2, 1] = 2  # the map says row 2 has no neighbour; it now would
    with pytest.raises(ValueError, match="changed in place"):
        conv_sum(x)
