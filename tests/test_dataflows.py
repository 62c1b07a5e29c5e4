"""The dataflow registry and its modules: strategies and work from each dataflow, plans kept in the
kernel map's memo, and input-gradient tables built only when that gradient is asked for."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, Grouping, ImplicitGemmConfig, dataflows
from pointsparse import functional as F
from pointsparse.dataflows.implicit import reordering
from pointsparse.kmap import TABLES
from pointsparse.strategies import FAMILIES, candidates, work_of

from helpers import DEVICES, random_tensor

GROUPED = ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER, grouping=Grouping.DENSE)
IMPLICIT = ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(8, True, 2))


def input_gradient_tables(kmap) -> set:
    """Which of the map's input-gradient tables exist (cached properties and memo entries), for a map
    that shares its tables with no inverse (side 0, see KernelMap.table_memo)."""
    built = {name for name in ("neighbors_t", "in_pos") if name in kmap.__dict__}
    shared, side = kmap._memo.get(TABLES, ({}, 0))
    assert side == 0
    return built | {key[0] + " transposed" for key, transposed in shared if transposed}


@pytest.mark.parametrize("config", [GROUPED, IMPLICIT], ids=["grouped", "implicit"])
def test_inference_builds_no_input_gradient_tables(config):
    x = random_tensor(num_points=80, channels=4, seed=3, dtype=torch.float32)
    weight = torch.randn(27, 4, 5)
    with torch.no_grad():
        y = F.conv3d(x, weight, config=config)
    kmap = ps.kernel_map(x, 3)
    assert input_gradient_tables(kmap) == set()
    # A weight gradient alone needs only the pairs.
    w = weight.clone().requires_grad_()
    F.conv3d(x, w, config=config).feats.sum().backward()
    assert input_gradient_tables(kmap) == set() and w.grad is not None
    # The features' gradient builds them, once, and the results agree with separate GEMMs.
    feats = x.feats.clone().requires_grad_()
    out = F.conv3d(x.with_feats(feats), weight, config=config)
    out.feats.sum().backward()
    # (The implicit GEMM's input gradient of a submanifold conv reads the forward's own table: see below.)
    assert input_gradient_tables(kmap) == ({"in_pos"} if config is GROUPED else set())
    reference = x.feats.clone().requires_grad_()
    separate = ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER)
    F.conv3d(x.with_feats(reference), weight, config=separate).feats.sum().backward()
    torch.testing.assert_close(feats.grad, reference.grad)
    torch.testing.assert_close(out.feats, y.feats)


@pytest.mark.parametrize("size,dilation", [(3, 1), ((3, 1, 5), 2)])
def test_a_submanifold_implicit_gemm_differentiates_through_its_own_table(size, dilation):
    """Its table is its own transpose with the offsets reversed: the input gradient reads the forward's
    table, order and tiles, with no transposed table or reordering, and equals gather-GEMM-scatter's;
    the pairs it hands on are its table's own; a strided map still transposes its table."""
    x = random_tensor(num_points=60, channels=3, span=6, seed=7, dtype=torch.float64)
    K = torch.tensor(size).prod().item() if isinstance(size, tuple) else size ** 3
    weight = torch.randn(K, 3, 4, dtype=torch.float64, requires_grad=True)
    feats = x.feats.clone().requires_grad_()

    def conv(config):
        return lambda f, w: F.conv3d(x.with_feats(f), w, kernel_size=size, dilation=dilation, config=config).feats

    implicit, separate = conv(IMPLICIT), conv(ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER))
    probe = torch.randn(x.coords.shape[0], 4, dtype=torch.float64)
    grads = [torch.autograd.grad((f(feats, weight) * probe).sum(), (feats, weight)) for f in (implicit, separate)]
    kmap = ps.kernel_map(x, size, dilation=dilation)
    assert input_gradient_tables(kmap) == set()
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)
    # The input gradient's own conv (as the backward calls it) is the conv over the map's pairs.
    order = reordering(kmap, IMPLICIT.implicit)
    w_t = weight.detach().flip(0).transpose(1, 2).requires_grad_()
    table = (kmap.neighbors, order.order, order.tile_masks)
    nested = ps.ops.conv_implicit(probe, w_t, *table, *table, *kmap.pairs, IMPLICIT.implicit.tile_rows, True)
    over_pairs = ps.ops.conv_gather_scatter(probe, w_t, *kmap.pairs, kmap.num_out, -1)
    torch.testing.assert_close(nested, over_pairs)
    weight_grads = [torch.autograd.grad((y * x.feats[:, :1]).sum(), w_t)[0] for y in (nested, over_pairs)]
    torch.testing.assert_close(*weight_grads)
    # A strided conv's input gradient transposes its table (nothing to share).
    F.conv3d(x.with_feats(feats), weight[:8, :, :].contiguous(), kernel_size=2, stride=2,
             config=IMPLICIT).feats.sum().backward()
    assert input_gradient_tables(ps.kernel_map(x, 2, 2)) == {"neighbors_t", "implicit transposed"}


def test_a_transposed_map_and_the_map_it_inverts_share_their_tables_and_reorderings():
    x = random_tensor(num_points=120, channels=4, seed=6, dtype=torch.float64)
    down = ps.kernel_map(x, 2, 2)
    y = F.conv3d(x, torch.randn(8, 4, 4, dtype=torch.float64), kernel_size=2, stride=2)
    up = ps.kernel_map(y, 2, 2, transposed=True)
    assert up.neighbors is down.neighbors_t and up.neighbors_t is down.neighbors
    config = IMPLICIT.implicit
    assert reordering(up, config, transposed=True) is reordering(down, config)
    assert reordering(down, config, transposed=True) is reordering(up, config)
    assert reordering(up, config) is not reordering(up, config, transposed=True)
    # Both convs' gradients through the shared tables, against gather-GEMM-scatter.
    grads = []
    for config in (IMPLICIT, ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER)):
        feats = x.feats.clone().requires_grad_()
        w_down = torch.randn(8, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        w_up = torch.randn(8, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
        mid = F.conv3d(x.with_feats(feats), w_down, kernel_size=2, stride=2, config=config)
        out = F.conv3d(mid, w_up, kernel_size=2, stride=2, transposed=True, config=config)
        out.feats.square().sum().backward()
        grads.append((out.feats.detach(), feats.grad, w_down.grad, w_up.grad))
    for implicit, separate in zip(*grads):
        torch.testing.assert_close(implicit, separate)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_the_implicit_gemm_runs_a_1x1x1_submanifold_conv_as_one_dense_gemm(device, dtype, monkeypatch):
    """Forward, both gradients and (CUDA) the inference epilogue, none through the implicit kernels."""
    x = random_tensor(num_points=80, channels=4, seed=5, dtype=dtype, device=device)
    kmap = ps.kernel_map(x, 1)
    feats = x.feats.clone().requires_grad_()
    weight = torch.randn(1, 4, 6, dtype=dtype, device=device, requires_grad=True)
    scale, shift = torch.rand(6, dtype=dtype, device=device), torch.rand(6, dtype=dtype, device=device)

    def unused(*args):
        raise AssertionError("the implicit GEMM's kernels ran")

    for name in ("conv_implicit", "conv_implicit_weight_grad", "conv_implicit_affine_relu"):
        monkeypatch.setattr(torch.ops.pointsparse, name, unused)
    out = F.conv3d(x.with_feats(feats), weight, kernel_size=1, config=IMPLICIT)
    out.feats.float().square().sum().backward()
    with torch.no_grad():
        after = F.conv3d(x, weight, kernel_size=1, config=IMPLICIT, epilogue=F.Epilogue(scale, shift, relu=True))
    assert TABLES not in kmap._memo  # no table reordered
    product = (x.feats.double() @ weight[0].double()).to(dtype)
    torch.testing.assert_close(out.feats, product)
    torch.testing.assert_close(after.feats, torch.relu(product.double() * scale.double() + shift.double()).to(dtype))
    grad = 2 * product.double()
    torch.testing.assert_close(weight.grad, (x.feats.double().t() @ grad)[None].to(dtype), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(feats.grad, (grad @ weight[0].double().t()).to(dtype), rtol=2e-3, atol=2e-3)


def test_the_memo_builds_once_per_key():
    kmap = ps.kernel_map(random_tensor(num_points=30, seed=4), 3)
    calls = []
    first = kmap.memo(("test", 1), lambda: calls.append(1) or object())
    assert kmap.memo(("test", 1), lambda: calls.append(1) or object()) is first and calls == [1]
    assert kmap.memo(("test", 2), lambda: calls.append(2) or object()) is not first and calls == [1, 2]


def test_strategies_and_their_families_come_from_the_registry():
    on_cpu, on_cuda = candidates(torch.device("cpu"), 27, quick=True), candidates(torch.device("cuda"), 27, quick=True)
    assert {s.family for s in on_cpu} == set(FAMILIES) == {"fused", "ggs", "implicit"}
    assert {s.family for s in on_cuda} == {"ggs", "implicit"}  # FUSED's spec runs on the CPU only
    for strategy in on_cpu:
        assert dataflows.REGISTRY[strategy.config.dataflow].family == strategy.family
    kmap = ps.kernel_map(random_tensor(num_points=60, seed=5), 3)
    useful = int(kmap.pair_counts.sum())
    for strategy in on_cpu:
        work = work_of(strategy.config, kmap, 13)
        assert work.useful_rows == useful and work.computed_rows >= useful


def test_which_dataflow_runs_where_is_the_registrys_answer():
    assert dataflows.runs_on(Dataflow.FUSED, "cpu") and not dataflows.runs_on(Dataflow.FUSED, "cuda")
    assert [s.dataflow for s in dataflows.dataflows_for("cuda")] == [Dataflow.GATHER_GEMM_SCATTER,
                                                                     Dataflow.IMPLICIT_GEMM]
