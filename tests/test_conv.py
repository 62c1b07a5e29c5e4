"""SparseConv3d against the dense oracle, forward and backward, for every conv kind."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, KernelMapAlgo, SparseTensor
from pointsparse import functional as F

from helpers import DEVICES, assert_gradcheck, dense_conv, random_tensor, skip_unless_runs, sparse_then_dense


def run_sparse_and_dense(x: SparseTensor, kernel_size, stride, dilation, transposed, algo,
                         out_channels=4, seed=1, dataflow=Dataflow.AUTO):
    """Outputs and gradients of feats and weight, sparse then dense, under one random loss."""
    gen = torch.Generator().manual_seed(seed)
    size = ps.offsets.as_triple(kernel_size, "kernel_size")
    weight = torch.randn(size[0] * size[1] * size[2], x.num_channels, out_channels, generator=gen,
                         dtype=x.feats.dtype).to(x.feats.device)

    def sparse(xin, w):
        return F.conv3d(xin, w, kernel_size=size, stride=stride, dilation=dilation, transposed=transposed,
                        config=ConvConfig(algo, dataflow))

    def dense(xin, w, y):
        return dense_conv(xin, w, size, (stride,) * 3, (dilation,) * 3, transposed, y.coords, y.stride)

    return sparse_then_dense(x, weight, sparse, dense, seed)[1]


def assert_matches_oracle(results):
    (out, grad_feats, grad_w), (ref_out, ref_grad_feats, ref_grad_w) = results
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad_feats, ref_grad_feats)
    torch.testing.assert_close(grad_w, ref_grad_w)


KINDS = ["submanifold", "strided", "transposed"]
DATAFLOWS = [Dataflow.GATHER_GEMM_SCATTER, Dataflow.FUSED]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("algo", list(KernelMapAlgo))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
def test_conv_matches_dense_oracle(device, dataflow, algo, kind, dilation, kernel_size):
    skip_unless_runs(dataflow, device)
    x = random_tensor(device=device)
    if kind == "submanifold":
        results = run_sparse_and_dense(x, kernel_size, 1, dilation, False, algo, dataflow=dataflow)
    elif kind == "strided":
        results = run_sparse_and_dense(x, kernel_size, 2, dilation, False, algo, dataflow=dataflow)
    else:
        # Make the stride-2 coordinates with a strided conv, then go back up with the transposed one.
        coarse = F.conv3d(x, torch.zeros(8, 3, 3, dtype=x.feats.dtype, device=device), kernel_size=2, stride=2,
                          config=ConvConfig(kmap=algo))
        coarse = coarse.with_feats(torch.randn(coarse.coords.shape[0], 3, dtype=x.feats.dtype,
                                               generator=torch.Generator().manual_seed(5)).to(device))
        results = run_sparse_and_dense(coarse, kernel_size, 2, dilation, True, algo, dataflow=dataflow)
        torch.testing.assert_close(results[0][0].shape[0], x.coords.shape[0])
    assert_matches_oracle(results)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel_size,stride", [(3, 3), (2, 3), ((3, 1, 3), 1), ((2, 2, 1), (2, 2, 1))])
def test_other_strides_and_anisotropic_kernels(device, kernel_size, stride):
    x = random_tensor(device=device, seed=3)
    size = ps.offsets.as_triple(kernel_size, "k")
    step = ps.offsets.as_triple(stride, "s")
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(size[0] * size[1] * size[2], 3, 2, generator=gen, dtype=torch.float64).to(device)
    y = F.conv3d(x, weight, kernel_size=size, stride=step)
    ref = dense_conv(x, weight, size, step, (1, 1, 1), False, y.coords, y.stride)
    torch.testing.assert_close(y.feats, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_submanifold_on_a_coarser_tensor(device):
    x = random_tensor(stride=2, device=device, seed=4)
    for algo in KernelMapAlgo:
        assert_matches_oracle(run_sparse_and_dense(x, 3, 1, 1, False, algo))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind, dataflow, device):
    skip_unless_runs(dataflow, device)
    assert_gradcheck(kind, device, ConvConfig(dataflow=dataflow))


def test_bias_is_added_per_output_channel():
    x = random_tensor(num_points=20, seed=7)
    weight = torch.randn(27, 3, 4, dtype=torch.float64)
    bias = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(F.conv3d(x, weight, bias=bias).feats, F.conv3d(x, weight).feats + bias)
