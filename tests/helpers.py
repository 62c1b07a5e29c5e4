"""Helpers shared by the test modules: real scans and devices, random sparse tensors, the dense
oracle, and the harnesses that compare dataflows and conv kinds with it. Test modules import from
here only (never from one another)."""

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, SparseTensor
from pointsparse import functional as F
from pointsparse import nn as spnn
from pointsparse.extras import extra_unavailable_reason, import_extra

GGS = Dataflow.GATHER_GEMM_SCATTER


# Real scans, devices and optional extras.
def _shared_data() -> Path:
    """Real-scan fixtures: $POINTSPARSE_SHARED_DATA, else shared/data inside the checkout (an ignored
    copy, which travels to a GPU machine), else ../shared/data beside it."""
    if "POINTSPARSE_SHARED_DATA" in os.environ:
        return Path(os.environ["POINTSPARSE_SHARED_DATA"])
    repo = Path(__file__).resolve().parents[1]
    inside = repo / "shared" / "data"
    return inside if inside.exists() else repo.parent / "shared" / "data"


SHARED_DATA = _shared_data()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


def require_extra(name: str):
    """The optional extra's module (``pointsparse.extras.EXTRAS``), used for real where it loads;
    otherwise the test is skipped with the reason, whatever the import raised (pytest.importorskip
    skips only a missing module, not e.g. open3d's ImportError for a missing libusb)."""
    reason = extra_unavailable_reason(name, "This test")
    if reason is not None:
        pytest.skip(reason)
    return import_extra(name, "This test")


def load_scan(relative: str) -> np.ndarray:
    """xyz float32 [N, 3] of a KITTI .bin under ../shared/data; skips the test when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real scan {path} not present")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]


def with_batch(coords: np.ndarray, batch: int = 0) -> torch.Tensor:
    """int32 [N, 4] from xyz int32 [N, 3]."""
    xyz = torch.from_numpy(np.ascontiguousarray(coords)).int()
    return torch.cat([torch.full((xyz.shape[0], 1), batch, dtype=torch.int32), xyz], 1)


# The dense oracle: scatter to a grid, run F.conv3d / F.conv_transpose3d, gather at the outputs.
def dense_weight(weight: Tensor, kernel_size: Tuple[int, int, int], transposed: bool) -> Tensor:
    """[K, C_in, C_out] in kernel_offsets order (x fastest) -> F.conv3d's [C_out, C_in, kx, ky, kz]
    or F.conv_transpose3d's [C_in, C_out, kx, ky, kz]."""
    kx, ky, kz = kernel_size
    grid = weight.reshape(kz, ky, kx, weight.shape[1], weight.shape[2])  # [kz, ky, kx, C_in, C_out]
    return grid.permute(3, 4, 2, 1, 0) if transposed else grid.permute(4, 3, 2, 1, 0)


def padding(kernel_size, dilation) -> Tuple[int, int, int]:
    # Odd kernels are centred: offset m * d - p = (m - k // 2) * d. Even kernels start at 0.
    return tuple((k // 2) * d if k % 2 else 0 for k, d in zip(kernel_size, dilation))


def grid_shape(x: SparseTensor, margin: int) -> Tuple[int, int, int]:
    top = (x.coords[:, 1:].max(0).values // torch.tensor(x.stride, device=x.coords.device)).tolist() if x.coords.shape[0] else [0] * 3
    return tuple(int(t) + 1 + margin for t in top)


def gather(dense: Tensor, coords: Tensor, stride: Tuple[int, int, int]) -> Tensor:
    """Rows [N, C] of a dense [B, C, X, Y, Z] at coords / stride."""
    index = (coords[:, 1:] // torch.tensor(stride, device=coords.device)).long()
    return dense[coords[:, 0].long(), :, index[:, 0], index[:, 1], index[:, 2]]


def dense_conv(x: SparseTensor, weight: Tensor, kernel_size, stride, dilation, transposed: bool,
               out_coords: Tensor, out_stride) -> Tensor:
    """Features [N_out, C_out] at out_coords of the dense convolution of x (coords >= 0)."""
    margin = (max(kernel_size) + 1) * max(dilation)
    grid = x.dense(grid_shape(x, margin))                                       # [B, C_in, X, Y, Z]
    conv = TF.conv_transpose3d if transposed else TF.conv3d
    out = conv(grid, dense_weight(weight, kernel_size, transposed), stride=stride,
               padding=padding(kernel_size, dilation), dilation=dilation)
    return gather(out, out_coords, out_stride)


def sparse_then_dense(x: SparseTensor, weight: Tensor, sparse, dense, seed: int = 1):
    """The sparse result ``y = sparse(x', w)`` and ``[(out, grad feats, grad weight)]`` of it and of
    ``dense(x', w, y)`` (the oracle's features at ``y``'s coordinates), each under one random probe
    loss; ``x'``, ``w``: fresh leaves of ``x``'s features and ``weight``."""
    results, y = [], None
    for path in ("sparse", "dense"):
        feats = x.feats.detach().clone().requires_grad_()
        w = weight.detach().clone().requires_grad_()
        xin = x.with_feats(feats)
        if path == "sparse":
            y = sparse(xin, w)
            out = y.feats
        else:
            out = dense(xin, w, y)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
        (out * probe.to(out.device)).sum().backward()
        results.append((out, feats.grad, w.grad))
    return y, results


def skip_unless_runs(dataflow: Dataflow, device: str) -> None:
    """Skips the test where the registry says ``dataflow`` does not run on ``device``."""
    if not ps.dataflows.runs_on(dataflow, device):
        pytest.skip(f"{dataflow} does not run on {device}")


# Random sparse tensors and gradcheck of a conv.
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

# torch.compile of cached convs.
def assert_compiles_fullgraph(config: ps.ConvConfig, device: str) -> None:
    """A two-layer net under ``config`` compiles to one graph once its maps are cached, with the
    eager forward and gradients (feats and first weight)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(spnn.SparseConv3d(3, 8, 3, config=config), spnn.ReLU(),
                              spnn.SparseConv3d(8, 4, 2, stride=2, config=config)).to(device)
    x = random_tensor(num_points=50, seed=9, dtype=torch.float32, device=device)
    feats = x.feats.clone().requires_grad_()
    eager = net(x.with_feats(feats))  # builds the maps into x.cache
    eager.feats.square().sum().backward()
    ref_feats, ref_weight = feats.grad, net[0].weight.grad
    net.zero_grad()

    # Forward traced as one graph; AOTAutograd compiles its backward.
    compiled = torch.compile(lambda f: net(x.with_feats(f)).feats, fullgraph=True)
    feats2 = x.feats.clone().requires_grad_()
    out = compiled(feats2)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager.feats)
    torch.testing.assert_close(feats2.grad, ref_feats)
    torch.testing.assert_close(net[0].weight.grad, ref_weight)


# The fused CPU kernels: ISA variants and the comparison with gather-GEMM-scatter.
ISAS = ["avx512", "avx2", "baseline"]


def use_isa(monkeypatch, isa: str) -> None:
    monkeypatch.setenv("POINTSPARSE_CPU_ISA", isa)
    if torch.ops.pointsparse.fused_cpu_isa() != isa:
        pytest.skip(f"this CPU cannot run {isa}")


def both_dataflows(x, weight, kernel_size, stride, configs=(ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER),
                                                              ConvConfig(dataflow=Dataflow.FUSED))):
    """(out, grad feats, grad weight) under each config (by default gather-GEMM-scatter, then FUSED)
    and one random loss."""
    results = []
    for config in configs:
        feats = x.feats.detach().clone().requires_grad_()
        w = weight.detach().clone().requires_grad_()
        y = F.conv3d(x.with_feats(feats), w, kernel_size=kernel_size, stride=stride, config=config)
        probe = torch.randn(y.feats.shape, generator=torch.Generator().manual_seed(3), dtype=y.feats.dtype)
        (y.feats * probe).sum().backward()
        results.append((y.feats, feats.grad, w.grad))
    return results


# Conv kinds against gather-GEMM-scatter and the oracle.
KINDS = {  # name: (kernel_size, stride, dilation, transposed)
    "submanifold k1": (1, 1, 1, False),
    "submanifold k3": (3, 1, 1, False),
    "submanifold k5": (5, 1, 1, False),
    "dilated k3": (3, 1, 2, False),
    "strided k2s2": (2, 2, 1, False),
    "strided k3s2": (3, 2, 1, False),
    "transposed k2s2": (2, 2, 1, True),
    "anisotropic (3, 1, 2)": ((3, 1, 2), 1, 1, False),
}


def conv_results(x, weight, kind, config, probe_seed=11):
    """(out, grad feats, grad weight) of one conv under a random probe loss, sparse and dense."""
    size, stride, dilation, transposed = kind
    feats = x.feats.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    y = F.conv3d(x.with_feats(feats), w, kernel_size=size, stride=stride, dilation=dilation,
                 transposed=transposed, config=config)
    probe = torch.randn(y.feats.shape, generator=torch.Generator().manual_seed(probe_seed),
                        dtype=y.feats.dtype).to(y.feats.device)
    (y.feats * probe).sum().backward()
    return y, (y.feats.detach(), feats.grad, w.grad), probe


def kind_input(kind, device, algo=ps.KernelMapAlgo.SORT, *, num_points=150, channels=5, span=8, seed=21,
               dtype=torch.float64) -> SparseTensor:
    """The input a conv of ``kind`` reads: a random tensor, or for a transposed conv the coarse one
    the strided conv it inverts makes (random features, the fine tensor's cache)."""
    size, stride, _dilation, transposed = kind
    x = random_tensor(num_points=num_points, channels=channels, span=span, seed=seed, device=device, dtype=dtype)
    if transposed:
        coarse = ps.kernel_map(x, size, stride, config=ConvConfig(kmap=algo))
        feats = torch.randn(coarse.num_out, channels, dtype=dtype, generator=torch.Generator().manual_seed(5))
        x = ps.SparseTensor(feats.to(device), coarse.out_coords, stride, x.cache)
    return x


def kind_weight(kind, device):
    """Random, asymmetric weights [K, 5, 4]: a slice applied to the wrong offset cannot pass."""
    size = ps.offsets.as_triple(kind[0], "kernel_size")
    volume = size[0] * size[1] * size[2]
    return torch.randn(volume, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)).to(device)


def check_against_oracle(x, weight, kind, config):
    """Output and both gradients under ``config`` equal gather-GEMM-scatter with one GEMM per
    offset and the dense oracle."""
    y, results, probe = conv_results(x, weight, kind, config)
    separate = conv_results(x, weight, kind, ConvConfig(config.kmap, GGS))[1]
    for value, reference in zip(results, separate):
        torch.testing.assert_close(value, reference)
    size = ps.offsets.as_triple(kind[0], "kernel_size")
    _, stride, dilation, transposed = kind
    feats = x.feats.detach().clone().requires_grad_()
    w = weight.clone().requires_grad_()
    dense = dense_conv(x.with_feats(feats), w, size, (stride,) * 3, (dilation,) * 3, transposed, y.coords, y.stride)
    (dense * probe).sum().backward()
    for value, reference in zip(results, (dense, feats.grad, w.grad)):
        torch.testing.assert_close(value, reference)
