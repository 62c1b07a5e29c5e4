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


class BuildLog:
    """Records the ``checked`` flag of every kernel-map op a build calls (the ops module's wrappers)."""

    ARGS = {"build_kmap_hash": 5, "build_kmap_sort": 5, "downsample_coords_hash": 3, "downsample_coords_sort": 3,
            "kmap_tiling": 5, "downsample_tiling": 4, "kmap_transpose": 3}  # checked: the last of these

    def __init__(self, monkeypatch):
        self.calls = []
        for name, count in self.ARGS.items():
            original = getattr(ps.ops, name)

            def spy(*args, _name=name, _count=count, _original=original, **kwargs):
                checked = kwargs.get("checked", args[_count - 1] if len(args) >= _count else False)
                self.calls.append((_name, checked))
                return _original(*args, **kwargs)

            monkeypatch.setattr(ps.ops, name, spy)


def test_coordinates_are_checked_by_the_first_map_and_never_again(monkeypatch):
    # Issue 26: the first map on a tensor's coordinates checks them (range, duplicates); every later
    # map at that stride, the strided conv's outputs (the library made them), the maps there and the
    # transposed map back are built with checked=True: on CUDA, no read-back.
    log = BuildLog(monkeypatch)
    coords = torch.randint(0, 12, (300, 3), generator=torch.Generator().manual_seed(0))
    coords = torch.unique(torch.cat([torch.zeros(300, 1, dtype=torch.int64), coords], 1), dim=0).int()
    x = SparseTensor(torch.randn(coords.shape[0], 2), coords)
    ps.kernel_map(x, 3)
    assert log.calls == [("build_kmap_sort", False)] and x.cache.checked == {(1, 1, 1)}
    log.calls.clear()
    ps.kernel_map(x, 3, dilation=2)
    down = ps.kernel_map(x, 2, 2)
    ps.kernel_map(x, 3, 2)  # a k3 s2 map onto the k2 s2 map's outputs (known, library-made)
    y = SparseTensor._derive(torch.randn(down.num_out, 2), down.out_coords, (2, 2, 2), x.cache, None)
    ps.kernel_map(y, 3)
    up = ps.kernel_map(y, 2, 2, transposed=True)
    assert x.cache.checked == {(1, 1, 1), (2, 2, 2)}
    assert all(checked for _, checked in log.calls), log.calls
    assert {name for name, _ in log.calls} == {"build_kmap_sort", "downsample_tiling", "kmap_transpose"}
    assert up.neighbors.equal(ops_transpose(down))


def ops_transpose(kmap):
    return ps.ops.kmap_transpose(kmap.neighbors, kmap.num_in)


@pytest.mark.parametrize("algo", list(ps.KernelMapAlgo))
def test_bad_coordinates_still_raise_at_their_first_map(algo):
    config = ps.ConvConfig(kmap=algo)  # HASH: the family's table checks them
    duplicated = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1], [0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="duplicate"):
        ps.kernel_map(SparseTensor(torch.randn(3, 1), duplicated), 3, config=config)
    far = torch.tensor([[0, 1, 1, 1], [0, 200000, 1, 1]], dtype=torch.int32)
    x = SparseTensor(torch.randn(2, 1), far)
    with pytest.raises(ValueError, match="x coordinates must be in"):
        ps.kernel_map(x, 3, config=config)
    assert not x.cache.checked  # a failed build vouches for nothing
    with pytest.raises(ValueError, match="x coordinates must be in"):
        ps.kernel_map(x, 2, 2, config=config)


def test_checked_downsampling_by_a_factor_that_does_not_divide_two_to_the_17_keeps_its_range_check():
    # Flooring coordinates in range by 3 can leave the packable range; by 2^k it cannot.
    low = torch.tensor([[0, -131072, 0, 0], [0, 5, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="leave the packable range"):
        ps.ops.downsample_coords_hash(low, (3, 3, 3), checked=True)
    assert ps.ops.downsample_coords_hash(low, (4, 4, 4), checked=True).shape == (2, 4)


def test_pairs_are_built_on_first_use_and_never_for_the_implicit_gemm_on_cuda():
    from pointsparse.dataflows.implicit import pairs_for
    x = SparseTensor(torch.randn(40, 3), line(range(40)))
    kmap = ps.kernel_map(x, 3)
    assert not kmap.has_pairs
    offset_ptr, in_idx, out_idx = pairs_for(kmap, torch.device("cuda"))  # stand-ins only
    assert not kmap.has_pairs and in_idx.numel() == 0 and offset_ptr.shape == (28,)
    assert kmap.offset_ptr[-1] == kmap.in_idx.shape[0] == int((kmap.neighbors >= 0).sum())
    assert kmap.has_pairs and pairs_for(kmap, torch.device("cpu"))[1] is kmap.in_idx


def test_a_map_takes_all_three_pair_arrays_or_none():
    kmap = ps.kernel_map(SparseTensor(torch.randn(5, 1), line(range(5))), 3)
    with pytest.raises(ValueError, match="together"):
        ps.KernelMap(kmap.neighbors, kmap.offset_ptr, None, None, kmap.out_coords, (1, 1, 1), 5)
    handed = ps.KernelMap(kmap.neighbors, *kmap.pairs, kmap.out_coords, (1, 1, 1), 5)
    assert handed.has_pairs and not handed.trusted and kmap.trusted


def test_hash_maps_share_one_table_per_stride(monkeypatch):
    # Issue 26: with HASH, every map at a stride queries the family's one table of its coordinates:
    # submanifold maps of any size or dilation, the strided maps that leave it, and the tiling map
    # that arrives there (its downsampling made the coordinates). Maps equal the unshared ones.
    config = ps.ConvConfig(kmap=ps.KernelMapAlgo.HASH)
    made = []
    original = ps.ops.coords_hash_table
    monkeypatch.setattr(ps.ops, "coords_hash_table", lambda coords, checked=False: made.append(coords.shape[0])
                        or original(coords, checked))
    coords = torch.unique(torch.randint(0, 16, (500, 3), generator=torch.Generator().manual_seed(3)), dim=0)
    coords = torch.cat([torch.zeros(coords.shape[0], 1, dtype=torch.int64), coords], 1).int()
    x = SparseTensor(torch.randn(coords.shape[0], 1), coords)
    maps = [ps.kernel_map(x, 3, config=config), ps.kernel_map(x, 5, dilation=2, config=config),
            ps.kernel_map(x, 2, 2, config=config), ps.kernel_map(x, 3, 2, config=config)]
    y = SparseTensor._derive(torch.randn(maps[2].num_out, 1), maps[2].out_coords, (2, 2, 2), x.cache, None)
    maps += [ps.kernel_map(y, 3, config=config), ps.kernel_map(y, 2, 2, config=config)]
    assert made == [coords.shape[0], maps[2].num_out, maps[5].num_out]  # one table per stride
    assert set(x.cache.tables) == {(1, 1, 1), (2, 2, 2), (4, 4, 4)}
    fresh = SparseTensor(x.feats, x.coords.clone())  # a family of its own, no tables: each map builds one
    sort = ps.ConvConfig(kmap=ps.KernelMapAlgo.SORT)
    expected = [ps.kernel_map(fresh, 3, config=sort), ps.kernel_map(fresh, 5, dilation=2, config=sort),
                ps.kernel_map(fresh, 2, 2, config=sort), ps.kernel_map(fresh, 3, 2, config=sort)]
    for got, want in zip(maps, expected):
        assert got.neighbors.equal(want.neighbors) and got.out_coords.equal(want.out_coords)


def test_a_hash_table_of_the_wrong_size_or_type_is_refused():
    coords = line(range(10))
    keys, values = ps.ops.coords_hash_table(coords)
    offsets = ps.kernel_offsets(3)
    with pytest.raises(ValueError, match="must have 16 slots"):
        ps.ops.build_kmap_hash(coords[:3], coords[:3], offsets, False, table=(keys, values))
    with pytest.raises(TypeError, match="int64 keys and int32 values"):
        ps.ops.build_kmap_hash(coords, coords, offsets, False, table=(keys.int(), values))
    with pytest.raises(ValueError, match="together"):
        torch.ops.pointsparse.build_kmap_hash(coords, coords, offsets, False, False, keys, None)
    with pytest.raises(ValueError, match="duplicate"):
        ps.ops.coords_hash_table(torch.cat([coords, coords[:1]]))
    table = ps.ops.build_kmap_hash(coords, coords, offsets, False, table=(keys, values))
    assert table.equal(ps.ops.build_kmap_hash(coords, coords, offsets, False))


def test_only_builds_that_check_their_input_whole_vouch_for_it(monkeypatch):
    # A tiling map skips inputs off the stride grid (it cannot see their duplicates) and a REACHED
    # map's outputs may leave the packable range: neither marks coordinates checked.
    log = BuildLog(monkeypatch)
    x = SparseTensor(torch.randn(64, 1), line(range(64)))
    ps.kernel_map(x, 2, 2)
    assert x.cache.checked == {(2, 2, 2)}  # the downsampled outputs, not the input
    ps.kernel_map(x, 3)
    assert log.calls[-1] == ("build_kmap_sort", False) and (1, 1, 1) in x.cache.checked
    y = SparseTensor(torch.randn(64, 1), line(range(64)))
    ps.kernel_map(y, 3, 2, outputs=ps.OutputRule.REACHED, padding=1)
    assert y.cache.checked == {(1, 1, 1)}
