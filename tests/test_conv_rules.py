"""The conventions of the other engines: every reached cell (spconv), padding, spatial ranges,
generative transposed convs, and the keyword-only arguments that keep their signatures apart."""

import pytest
import torch
import torch.nn.functional as TF

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, KernelMapAlgo, OutputRule, SparseTensor
from pointsparse import functional as F
from pointsparse.offsets import as_triple, default_padding

from helpers import (DEVICES, dense_weight, gather, load_scan, random_tensor, skip_unless_runs,
                     sparse_then_dense, with_batch)

SPAN = 7
DATAFLOWS = [Dataflow.GATHER_GEMM_SCATTER, Dataflow.FUSED]


def ranged_tensor(device, seed=0, channels=3) -> SparseTensor:
    x = random_tensor(num_points=60, channels=channels, span=SPAN, seed=seed, device=device)
    return SparseTensor(x.feats, x.coords, spatial_range=(SPAN,) * 3)


def run_both(x, kernel_size, stride, padding, transposed, generative, config, seed=1):
    """Sparse then dense outputs and gradients (feats, weight) under one random probe; also the
    number of non-zero cells of the dense result, which a reached-cell conv must output."""
    size, step = as_triple(kernel_size, "k"), as_triple(stride, "s")
    pad = default_padding(size) if padding is None else as_triple(padding, "p", minimum=0)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(size[0] * size[1] * size[2], x.num_channels, 4, generator=gen,
                         dtype=x.feats.dtype).to(x.feats.device)
    occupied = 0

    def sparse(xin, w):
        return F.conv3d(xin, w, kernel_size=size, stride=step, transposed=transposed, padding=padding,
                        outputs=OutputRule.REACHED, generative=generative, config=config)

    def dense(xin, w, y):
        nonlocal occupied
        conv = TF.conv_transpose3d if transposed else TF.conv3d
        grid = conv(xin.dense(), dense_weight(w, size, transposed), stride=step, padding=pad)
        occupied = int((grid.detach().abs().sum(1) > 0).sum())
        return gather(grid, y.coords, y.stride)

    y, results = sparse_then_dense(x, weight, sparse, dense, seed)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    return y, occupied


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("algo", list(KernelMapAlgo))
@pytest.mark.parametrize("kernel_size,stride,padding", [
    (3, 2, None), (3, 2, 0), (3, 2, (0, 1, 1)), (2, 2, None), (3, 1, None), (5, 2, 1), ((3, 1, 1), (2, 1, 1), 0)])
def test_reached_cells_match_the_dense_conv_everywhere_it_is_nonzero(device, dataflow, algo, kernel_size,
                                                                     stride, padding):
    skip_unless_runs(dataflow, device)
    x = ranged_tensor(device)
    y, occupied = run_both(x, kernel_size, stride, padding, False, False, ConvConfig(algo, dataflow))
    # Random weights make every reached cell non-zero: the outputs are exactly those cells.
    assert y.coords.shape[0] == occupied
    size, step = as_triple(kernel_size, "k"), as_triple(stride, "s")
    pad = default_padding(size) if padding is None else as_triple(padding, "p", minimum=0)
    assert y.spatial_range == tuple((SPAN + 2 * p - k) // s + 1 for k, s, p in zip(size, step, pad))
    assert torch.equal(torch.unique(y.coords, dim=0), y.coords)  # sorted and unique


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("kernel_size,padding", [(2, None), (3, None), (3, 0)])
def test_generative_transposed_conv_outputs_every_reached_finer_cell(device, dataflow, kernel_size, padding):
    skip_unless_runs(dataflow, device)
    coarse = F.conv3d(ranged_tensor(device, channels=2), torch.randn(8, 2, 3, dtype=torch.float64, device=device),
                      kernel_size=2, stride=2)
    assert coarse.spatial_range == (4, 4, 4)
    y, occupied = run_both(coarse, kernel_size, 2, padding, True, True, ConvConfig(dataflow=dataflow))
    assert y.coords.shape[0] == occupied and y.stride == (1, 1, 1)
    # New coordinates at stride 1: the output starts a family of its own.
    assert y.cache is not coarse.cache and y.cache.coords[(1, 1, 1)] is y.coords


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_conv_inverts_the_reached_strided_conv(device):
    x = ranged_tensor(device)
    down = F.conv3d(x, torch.randn(27, 3, 5, dtype=torch.float64, device=device), kernel_size=3, stride=2,
                    outputs=OutputRule.REACHED, padding=0)
    w = torch.randn(27, 5, 3, dtype=torch.float64, device=device)
    up = F.conv3d(down, w, kernel_size=3, stride=2, transposed=True, outputs=OutputRule.REACHED, padding=0)
    assert up.coords is x.coords and up.spatial_range == x.spatial_range
    grid = TF.conv_transpose3d(down.dense(), dense_weight(w, (3, 3, 3), True), stride=2, padding=0,
                               output_padding=1)  # back to the 7-cell range
    torch.testing.assert_close(up.feats, gather(grid, x.coords, (1, 1, 1)))


@pytest.mark.parametrize("kind", ["reached", "generative"])
def test_gradcheck_float64(kind):
    x = random_tensor(num_points=12, channels=2, span=3, seed=6)
    transposed = kind == "generative"
    if transposed:
        x = F.conv3d(x, torch.zeros(8, 2, 2, dtype=torch.float64), kernel_size=2, stride=2)
    weight = torch.randn(27, 2, 3, dtype=torch.float64).requires_grad_()
    feats = x.feats.detach().clone().requires_grad_()

    def conv(f, w):
        return F.conv3d(x.with_feats(f), w, kernel_size=3, stride=2, transposed=transposed,
                        generative=transposed, outputs=OutputRule.REACHED).feats

    assert torch.autograd.gradcheck(conv, (feats, weight))


def test_rules_mixed_at_one_stride_keep_their_own_coordinates():
    x = ranged_tensor("cpu")
    w3, w2 = torch.randn(27, 3, 3, dtype=torch.float64), torch.randn(8, 3, 3, dtype=torch.float64)
    reached = F.conv3d(x, w3, kernel_size=3, stride=2, outputs=OutputRule.REACHED)
    occupied = F.conv3d(x, w2, kernel_size=2, stride=2)
    alone = F.conv3d(SparseTensor(x.feats, x.coords), w2, kernel_size=2, stride=2)
    assert torch.equal(occupied.coords, alone.coords) and torch.equal(occupied.feats, alone.feats)
    assert reached.coords.shape[0] > occupied.coords.shape[0]
    # A submanifold conv on each then uses each one's own coordinates.
    for t in (reached, occupied):
        y = F.conv3d(t, torch.randn(27, 3, 2, dtype=torch.float64), kernel_size=3)
        assert y.coords is t.coords


def test_padding_needs_the_reached_rule_and_generative_needs_transposed():
    x = ranged_tensor("cpu")
    with pytest.raises(ValueError, match="REACHED"):
        F.conv3d(x, torch.randn(27, 3, 3, dtype=torch.float64), kernel_size=3, stride=2, padding=0)
    with pytest.raises(ValueError, match="transposed"):
        ps.nn.SparseConv3d(3, 3, 3, 2, generative=True)
    # The default anchoring written out is the default.
    layer = ps.nn.SparseConv3d(3, 3, 3, 2, padding=1)
    assert layer(x.to(torch.float32)).coords.shape[0] == F.conv3d(
        x, torch.zeros(27, 3, 3, dtype=torch.float64), kernel_size=3, stride=2).coords.shape[0]


def test_positional_arguments_after_stride_are_refused():
    # spconv / TorchSparse: (in, out, kernel_size, stride, padding, dilation, ...). Here padding is
    # not fifth: the call must fail, not mean dilation 2 with a bias.
    with pytest.raises(TypeError):
        ps.nn.SparseConv3d(16, 32, 5, 1, 2, 1)
    with pytest.raises(TypeError):
        F.conv3d(ranged_tensor("cpu"), torch.zeros(27, 3, 3, dtype=torch.float64), 3)


def test_reached_strided_conv_on_a_real_scan_outputs_every_reached_cell():
    # The count on 07/000964 at 0.05 m: k3 s2 gives 96,911 reached cells vs 45,710 occupied.
    coords = with_batch(ps.sparse_quantize(load_scan("semantickitti/sequences/07/velodyne/000964.bin"), 0.05))
    coords[:, 1:] -= coords[:, 1:].min(0).values  # spconv indices start at 0
    shape = (coords[:, 1:].max(0).values + 1).tolist()
    x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, spatial_range=shape)
    occupied = ps.kernel_map(x, 3, 2)
    reached = ps.kernel_map(x, 3, 2, outputs=OutputRule.REACHED)
    assert occupied.num_out == 45710
    assert reached.num_out == 96911
    # Without a range, three cells past the top of the grid come out too.
    assert ps.kernel_map(SparseTensor(x.feats, coords), 3, 2, outputs=OutputRule.REACHED).num_out == 96914
    key = ps.KernelMapKey.of((1, 1, 1), 3, 2, outputs=OutputRule.REACHED, spatial_range=shape)
    via_hash = ps.kmap.build_reached_kernel_map(coords, key, ConvConfig(kmap=KernelMapAlgo.HASH))
    assert torch.equal(via_hash.neighbors, reached.neighbors)
