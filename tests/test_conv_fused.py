"""The fused CPU dataflow against gather-GEMM-scatter: every instruction set, dtype and tile edge."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, dataflows
from pointsparse import functional as F

from helpers import ISAS, both_dataflows, random_tensor, use_isa

ops = torch.ops.pointsparse


# Channel counts around the register tile (16 float32 lanes x 2 vectors on AVX-512, 8 on AVX2,
# 4 on SSE2; 6 rows) and pair counts that leave partial tiles and several parallel chunks.
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 5), (7, 33), (32, 32), (33, 70)])
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2)])
def test_fused_equals_gather_gemm_scatter(monkeypatch, isa, dtype, c_in, c_out, kernel_size, stride):
    use_isa(monkeypatch, isa)
    x = random_tensor(num_points=900, channels=c_in, span=12, seed=c_in + c_out, dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(kernel_size ** 3, c_in, c_out, generator=gen, dtype=dtype) / (c_in * 3)
    (out, grad_feats, grad_w), (ref_out, ref_grad_feats, ref_grad_w) = both_dataflows(
        x, weight, kernel_size, stride)
    for got, ref in ((out, ref_out), (grad_feats, ref_grad_feats), (grad_w, ref_grad_w)):
        # Sums of up to ~900 products in another order: float32 differs in the last digits.
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c_in,c_out", [(3, 5), (32, 48)])
def test_fused_transposed_conv_assigns_each_output_once(monkeypatch, isa, c_in, c_out):
    # A transposed k2 s2 map gives every output row exactly one pair (and so does the input gradient
    # of the strided conv): the fused forward assigns instead of zero-filling and adding.
    use_isa(monkeypatch, isa)
    x = random_tensor(num_points=3000, channels=c_in, span=30, seed=5, dtype=torch.float64)
    coarse = F.conv3d(x, torch.zeros(8, c_in, c_in, dtype=torch.float64), kernel_size=2, stride=2)
    coarse = coarse.with_feats(torch.randn(coarse.feats.shape, dtype=torch.float64))
    km = ps.kernel_map(coarse, 2, 2, transposed=True)
    assert int(km.offset_ptr[-1]) == km.num_out == x.feats.shape[0]
    weight = torch.randn(8, c_in, c_out, dtype=torch.float64)
    args = (coarse.feats, weight, km.offset_ptr, km.in_idx, km.out_idx, km.num_out, -1)
    torch.testing.assert_close(ops.conv_fused(*args), ops.conv_gather_scatter(*args))
    # The same pair count with a row covered twice, by two offsets (and one not at all), must still add.
    out_idx, second = km.out_idx.clone(), int(km.offset_ptr[1])
    assert 0 < second < int(km.offset_ptr[2])
    out_idx[second] = out_idx[0]
    args = args[:4] + (out_idx,) + args[5:]
    torch.testing.assert_close(ops.conv_fused(*args), ops.conv_gather_scatter(*args))


def test_fused_weight_grad_spans_many_tasks():
    # More pairs than one weight-gradient task (4096) and one parallel chunk per offset.
    x = random_tensor(num_points=30000, channels=8, span=40, batches=3, seed=21, dtype=torch.float64)
    km = ps.kernel_map(x, 3)
    grad = torch.randn(km.num_out, 6, dtype=torch.float64)
    args = (x.feats, grad, km.offset_ptr, km.in_idx, km.out_idx, 13)
    assert km.in_idx.numel() > 4 * 4096
    torch.testing.assert_close(ops.conv_fused_weight_grad(*args), ops.conv_weight_grad(*args))


def test_auto_is_fused_on_cpu_and_fused_is_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dataflows.resolve(Dataflow.AUTO, cpu, torch.float32).dataflow is Dataflow.FUSED
    for tensor_cores in (torch.float16, torch.bfloat16, torch.float32):
        assert dataflows.resolve(Dataflow.AUTO, cuda, tensor_cores).dataflow is Dataflow.IMPLICIT_GEMM
    assert dataflows.resolve(Dataflow.AUTO, cuda, torch.float64).dataflow is Dataflow.GATHER_GEMM_SCATTER
    with pytest.raises(ValueError, match="available there: Dataflow.GATHER_GEMM_SCATTER, Dataflow.IMPLICIT_GEMM"):
        dataflows.resolve(Dataflow.FUSED, cuda, torch.float32)
    assert {s.dataflow for s in dataflows.dataflows_for(cpu, torch.bfloat16)} == {
        Dataflow.FUSED, Dataflow.GATHER_GEMM_SCATTER, Dataflow.IMPLICIT_GEMM}


def test_unknown_isa_raises(monkeypatch):
    monkeypatch.setenv("POINTSPARSE_CPU_ISA", "sse9")
    x = random_tensor(num_points=10, dtype=torch.float32)
    with pytest.raises(ValueError, match="POINTSPARSE_CPU_ISA"):
        F.conv3d(x, torch.randn(27, 3, 2), config=ConvConfig(dataflow=Dataflow.FUSED))


@pytest.mark.parametrize("kernel_size,stride,transposed", [(3, 1, False), (2, 2, False), (2, 2, True)])
def test_fused_results_do_not_depend_on_the_thread_count(kernel_size, stride, transposed):
    # Output rows run in blocks whose sizes depend on the thread count (the last ones quartered so
    # the threads finish together), but every row sums its terms in the same order: forward, both
    # gradients and the batch-norm epilogue are bitwise equal at 1 and 2 threads and across runs.
    x = random_tensor(num_points=20000, channels=48, span=40, seed=11, dtype=torch.float32)
    if transposed:
        x = F.conv3d(x, torch.randn(8, 48, 48) / 48, kernel_size=2, stride=2)
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(kernel_size ** 3, 48, 64, generator=gen) / 48
    config = ConvConfig(dataflow=Dataflow.FUSED)
    scale, shift = torch.rand(64, generator=gen) + 0.5, torch.randn(64, generator=gen)

    def run():
        feats = x.feats.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        y = F.conv3d(x.with_feats(feats), w, kernel_size=kernel_size, stride=stride, transposed=transposed,
                     config=config)
        y.feats.backward(torch.ones_like(y.feats))
        with torch.no_grad():
            fused = F.conv3d(x, weight, kernel_size=kernel_size, stride=stride, transposed=transposed,
                             config=config, epilogue=F.Epilogue(scale, shift, relu=True)).feats
        return y.feats.detach(), feats.grad, w.grad, fused

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, again = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    assert x.feats.shape[0] > 8 * 256  # several blocks of output rows at either thread count
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c)
