"""Conv ops under torch.autocast (bfloat16 on the CPU, float16 / bfloat16 on CUDA), every conv kind
and dataflow, forward and backward; half precision sums offsets in float32; MinkUNet18 under AMP."""

import math

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, SparseTensor, dataflows
from pointsparse import functional as F
from pointsparse.crosscheck import REDUCED_TOLERANCE
from pointsparse.models import minkunet18

from helpers import DEVICES, KINDS, kind_input, random_tensor, skip_unless_runs

def autocast_dtypes(device):
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


def cases():
    for device in DEVICES:
        name = device if isinstance(device, str) else device.values[0]
        marks = () if isinstance(device, str) else device.marks
        for dtype in autocast_dtypes(name):
            for dataflow in (Dataflow.GATHER_GEMM_SCATTER, Dataflow.FUSED):
                if not dataflows.runs_on(dataflow, name, dtype):
                    continue
                yield pytest.param(name, dtype, dataflow, marks=marks,
                                   id=f"{name}-{str(dtype)[6:]}-{dataflow.value}")


def conv_input(device, kind):
    return kind_input(kind, device, num_points=200, channels=8, span=9, seed=3, dtype=torch.float32)


@pytest.mark.parametrize("kind_name", list(KINDS))
@pytest.mark.parametrize("device,dtype,dataflow", list(cases()))
def test_conv_under_autocast_matches_float64(device, dtype, dataflow, kind_name):
    size, stride, dilation, transposed = KINDS[kind_name]
    x = conv_input(device, KINDS[kind_name])
    volume = math.prod(ps.offsets.as_triple(size, "kernel_size"))
    weight = (torch.randn(volume, 8, 6, device=device) / (8 * volume) ** 0.5).requires_grad_()
    bias = torch.randn(6, device=device, requires_grad=True)
    feats = x.feats.clone().requires_grad_()
    config = ConvConfig(dataflow=dataflow)
    with torch.autocast(device, dtype=dtype):
        y = F.conv3d(x.with_feats(feats), weight, kernel_size=size, bias=bias, stride=stride, dilation=dilation,
                     transposed=transposed, config=config)
    assert y.feats.dtype == dtype
    probe = torch.randn(y.feats.shape, device=device)
    (y.feats.float() * probe).sum().backward()
    assert feats.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32

    f64, w64, b64 = (t.detach().double().requires_grad_() for t in (feats, weight, bias))
    ref = F.conv3d(x.with_feats(f64), w64, kernel_size=size, bias=b64, stride=stride, dilation=dilation,
                   transposed=transposed, config=config)
    (ref.feats * probe.double()).sum().backward()
    for value, reference in ((y.feats, ref.feats), (feats.grad, f64.grad), (weight.grad, w64.grad),
                             (bias.grad, b64.grad)):
        error = (value.double() - reference).abs().max() / reference.abs().max()
        assert error < REDUCED_TOLERANCE[dtype], f"relative error {error:.3g}"


def centre_of_a_full_cube(device, dtype):
    """27 voxels of a 3x3x3 cube; the centre sees all 27 offsets."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(27, 1, dtype=torch.long), grid], 1).int().to(device)
    return SparseTensor(torch.ones(27, 1, dtype=dtype, device=device), coords)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dataflow", [Dataflow.GATHER_GEMM_SCATTER, Dataflow.FUSED])
def test_half_precision_sums_offsets_in_float32(device, dtype, dataflow):
    skip_unless_runs(dataflow, device)
    # Centre weight 2^m (m = mantissa bits + 1), the 26 others 1: at 2^m the spacing of the dtype is 2,
    # so rounded after every offset the sum would stay at 2^m (2^m + 1 rounds back to it); summed in
    # float32 the centre gets 2^m + 26, which the dtype holds exactly.
    big = 256 if dtype == torch.bfloat16 else 2048
    x = centre_of_a_full_cube(device, dtype)
    weight = torch.ones(27, 1, 1, dtype=dtype, device=device)
    weight[13] = big
    out = F.conv3d(x, weight, kernel_size=3, config=ConvConfig(dataflow=dataflow)).feats
    centre = int((x.coords[:, 1:] == 1).all(1).nonzero())
    assert out.dtype == dtype and out[centre].item() == big + 26


@pytest.mark.parametrize("device", DEVICES)
def test_ops_keep_their_dtype_outside_autocast(device):
    x = random_tensor(num_points=80, channels=4, device=device, dtype=torch.bfloat16)
    weight = torch.randn(27, 4, 5, dtype=torch.bfloat16, device=device, requires_grad=True)
    y = F.conv3d(x, weight, kernel_size=3, config=ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER))
    assert y.feats.dtype == torch.bfloat16
    y.feats.sum().backward()
    assert weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_opcheck(device):
    x = random_tensor(num_points=30, channels=3, device=device, dtype=torch.float32)
    kmap = ps.kernel_map(x, 3)
    weight = torch.randn(27, 3, 4, device=device)
    args = (x.feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out, 13)
    for dtype in autocast_dtypes(device):
        with torch.autocast(device, dtype=dtype):
            out = torch.ops.pointsparse.conv_gather_scatter(*args)
            assert out.dtype == dtype
        torch.library.opcheck(torch.ops.pointsparse.conv_gather_scatter.default,
                              tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                    for a in args))


@pytest.mark.parametrize("device,dtype,dataflow", list(cases()))
def test_minkunet18_trains_under_autocast(device, dtype, dataflow):
    torch.manual_seed(0)
    model = minkunet18(in_channels=4, num_classes=5, cr=0.25).to(device)
    for module in model.modules():
        if isinstance(module, ps.nn.SparseConv3d):
            module.config = ConvConfig(dataflow=dataflow)
    x = random_tensor(num_points=3000, channels=4, span=24, seed=5, device=device, dtype=torch.float32)
    labels = torch.randint(0, 5, (x.coords.shape[0],), device=device)
    with torch.autocast(device, dtype=dtype):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    assert logits.dtype == dtype
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


AUTOCAST_OPS = ("conv_gather_scatter", "conv_weight_grad", "conv_grouped", "conv_grouped_weight_grad", "conv_fused",
                "conv_fused_weight_grad", "conv_implicit", "conv_implicit_weight_grad", "conv_implicit_affine_relu")


@pytest.mark.parametrize("key", ["AutocastCPU", "AutocastCUDA"])
def test_every_conv_op_has_a_cpp_autocast_kernel_and_a_python_twin(key):
    for name in AUTOCAST_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pointsparse::{name}", key), name
        assert getattr(torch._C.DispatchKey, key) in getattr(torch.ops.pointsparse, name).default.py_kernels


def test_a_weight_is_cast_once_per_autocast_region():
    """ATen's autocast cache: two convs with one float32 weight (a leaf that requires grad) cast it
    once; the features are cast each time. (Gather-GEMM-scatter: the CPU's fused and implicit kernels
    convert half-precision operands to float32 inside, which would blur the count; the autocast
    kernel is one for every op.)"""
    x = random_tensor(num_points=60, channels=8, seed=5, dtype=torch.float32)
    weight = torch.randn(27, 8, 4, requires_grad=True)
    config = ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER)
    with torch.profiler.profile(record_shapes=True) as prof, torch.autocast("cpu", dtype=torch.bfloat16):
        F.conv3d(x, weight, config=config)
        F.conv3d(x, weight, config=config)
    casts = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy"]
    assert casts.count([27, 8, 4]) == 1 and casts.count([x.coords.shape[0], 8]) == 2
