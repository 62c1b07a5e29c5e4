"""SparseConv3d against the dense oracle, forward and backward, for every conv kind."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, KernelMapAlgo, SparseTensor
from pointsparse import functional as F

from conftest import DEVICES
from dense_oracle import dense_conv


def random_tensor(num_points=60, channels=3, span=7, batches=2, stride=1, seed=0, device="cpu",
                  dtype=torch.float64) -> SparseTensor:
    """Unique non-negative coords (multiples of stride) over ragged batches, random feats."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batches, (num_points, 1), generator=gen),
                        torch.randint(0, span, (num_points, 3), generator=gen) * stride], 1)
    coords = torch.unique(coords, dim=0).int()
    coords = coords[torch.randperm(coords.shape[0], generator=gen)]
    feats = torch.randn(coords.shape[0], channels, generator=gen, dtype=dtype)
    return SparseTensor(feats.to(device), coords.to(device), stride)


def run_sparse_and_dense(x: SparseTensor, kernel_size, stride, dilation, transposed, algo,
                         out_channels=4, seed=1, dataflow=Dataflow.AUTO):
    """Outputs and gradients of feats and weight, sparse then dense, under one random loss."""
    gen = torch.Generator().manual_seed(seed)
    size = ps.offsets.as_triple(kernel_size, "kernel_size")
    weight = torch.randn(size[0] * size[1] * size[2], x.num_channels, out_channels, generator=gen,
                         dtype=x.feats.dtype).to(x.feats.device)
    results = []
    for path in ("sparse", "dense"):
        feats = x.feats.detach().clone().requires_grad_()
        w = weight.clone().requires_grad_()
        xin = x.with_feats(feats)
        y = F.conv3d(xin, w, kernel_size=size, stride=stride, dilation=dilation, transposed=transposed,
                     config=ConvConfig(algo, dataflow))
        if path == "sparse":
            out, out_coords, out_stride = y.feats, y.coords, y.stride
        else:
            out = dense_conv(xin, w, size, (stride,) * 3, (dilation,) * 3, transposed, out_coords, out_stride)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1),
                            dtype=out.dtype).to(out.device)
        (out * probe).sum().backward()
        results.append((out, feats.grad, w.grad))
    return results


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
    if dataflow is Dataflow.FUSED and device != "cpu":
        pytest.skip("the fused dataflow runs on the CPU only")
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
    if dataflow is Dataflow.FUSED and device != "cpu":
        pytest.skip("the fused dataflow runs on the CPU only")
    assert_gradcheck(kind, device, ConvConfig(dataflow=dataflow))


def assert_gradcheck(kind: str, device: str, config: ConvConfig) -> None:
    """gradcheck in float64 of a k3 conv of ``kind`` (submanifold, strided or transposed) in feats,
    weight and bias under ``config``."""
    x = random_tensor(num_points=12, channels=2, span=3, seed=6, device=device)
    stride, transposed = (1, False) if kind == "submanifold" else (2, kind == "transposed")
    if transposed:
        x = F.conv3d(x, torch.zeros(8, 2, 2, dtype=torch.float64, device=device), kernel_size=2, stride=2)
    weight = torch.randn(27, 2, 3, dtype=torch.float64).to(device).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64).to(device).requires_grad_()
    feats = x.feats.detach().clone().requires_grad_()

    def conv(f, w, b):
        return F.conv3d(x.with_feats(f), w, kernel_size=3, bias=b, stride=stride, transposed=transposed,
                        config=config).feats

    assert torch.autograd.gradcheck(conv, (feats, weight, bias))


def test_bias_is_added_per_output_channel():
    x = random_tensor(num_points=20, seed=7)
    weight = torch.randn(27, 3, 4, dtype=torch.float64)
    bias = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(F.conv3d(x, weight, bias=bias).feats, F.conv3d(x, weight).feats + bias)
