"""A conv ending in an eval-mode batch norm, a residual and a ReLU (the conv's epilogue): the fused CPU
op against the conv followed by the affine, gradients, opcheck, every dataflow through
``functional.conv3d``, ``nn.conv_norm`` against the separate modules, and bad inputs."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow
from pointsparse import functional as F
from pointsparse import nn as spnn
from pointsparse.ops import norm

from helpers import ISAS, dense_conv, random_tensor, use_isa

ops = torch.ops.pointsparse


def affine(c, dtype, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(c, generator=gen, dtype=dtype), torch.randn(c, generator=gen, dtype=dtype)


def reference(y, scale, shift, relu, residual=None):
    y = y * scale + shift if residual is None else y * scale + shift + residual
    return torch.relu(y) if relu else y


# Widths on and off whole vectors (the weight used as it is / padded), submanifold (identity offset),
# strided and transposed maps, enough rows for many output blocks and partial ones.
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out", [(3, 5), (16, 32), (33, 70)])
@pytest.mark.parametrize("kernel_size,stride,transposed", [(3, 1, False), (2, 2, False), (2, 2, True)])
@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True), (False, True)])
def test_fused_epilogue_equals_conv_then_affine(monkeypatch, isa, dtype, c_in, c_out, kernel_size, stride,
                                                transposed, relu, with_residual):
    use_isa(monkeypatch, isa)
    x = random_tensor(num_points=4000, channels=c_in, span=20, seed=c_in, dtype=dtype)
    if transposed:  # from the coarse tensor back to x's coordinates
        coarse = F.conv3d(x, torch.zeros(8, c_in, c_in, dtype=dtype), kernel_size=2, stride=2)
        x = coarse.with_feats(torch.randn(coarse.feats.shape, dtype=dtype))
    km = ps.kernel_map(x, kernel_size, stride, transposed=transposed)
    identity = F.identity_offset(kernel_size, stride, transposed)
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(kernel_size ** 3, c_in, c_out, generator=gen, dtype=dtype) / c_in
    scale, shift = affine(c_out, dtype)
    residual = torch.randn(km.num_out, c_out, generator=gen, dtype=dtype) if with_residual else None
    args = (x.feats, weight, km.offset_ptr, km.in_idx, km.out_idx, km.num_out, identity)
    got = ops.conv_fused_affine_relu(*args, scale, shift, relu, residual)
    want = reference(ops.conv_fused(*args), scale, shift, relu, residual)
    # The same conv kernels; the affine may contract into an FMA in one and not the other.
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_fused_epilogue_matches_the_dense_oracle(kernel_size, stride):
    # conv3d with an epilogue on the fused dataflow against F.conv3d on the dense grid, then the
    # batch-norm affine, the residual and the ReLU in float64.
    x = random_tensor(num_points=500, channels=4, span=10, seed=11, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(kernel_size ** 3, 4, 6, generator=gen, dtype=torch.float64)
    scale, shift = affine(6, torch.float64)
    km = ps.kernel_map(x, kernel_size, stride)
    residual = ps.SparseTensor(torch.randn(km.num_out, 6, generator=gen, dtype=torch.float64), km.out_coords,
                               km.out_stride)
    got = F.conv3d(x, weight, kernel_size=kernel_size, stride=stride, config=ConvConfig(dataflow=Dataflow.FUSED),
                   epilogue=F.Epilogue(scale, shift, True, residual))
    size, step = (kernel_size,) * 3, (stride,) * 3
    dense = dense_conv(x, weight, size, step, (1, 1, 1), False, got.coords, got.stride)
    torch.testing.assert_close(got.feats, reference(dense, scale, shift, True, residual.feats))


@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True)])
def test_gradcheck_of_the_fused_epilogue(relu, with_residual):
    x = random_tensor(num_points=60, channels=3, span=5, seed=4)
    km = ps.kernel_map(x, 3)
    gen = torch.Generator().manual_seed(1)
    # Shift the pre-activation away from 0 so the ReLU's kink does not fall inside the finite step.
    weight, scale = torch.randn(27, 3, 4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    shift = torch.randn(4, generator=gen, dtype=torch.float64)
    residual = torch.randn(km.num_out, 4, generator=gen, dtype=torch.float64)
    tensors = [t.clone().requires_grad_() for t in (x.feats, weight, scale, shift, residual)]

    def fn(f, w, a, b, r):
        return ops.conv_fused_affine_relu(f, w, km.offset_ptr, km.in_idx, km.out_idx, km.num_out, 13, a, b, relu,
                                          r if with_residual else None)

    assert torch.autograd.gradcheck(fn, tensors)


def test_opcheck_of_the_fused_epilogue():
    x = random_tensor(num_points=60, channels=3, span=5, seed=4, dtype=torch.float32)
    km = ps.kernel_map(x, 3)
    weight, (scale, shift) = torch.randn(27, 3, 4), affine(4, torch.float32)
    base = (x.feats, weight, km.offset_ptr, km.in_idx, km.out_idx, km.num_out, 13, scale, shift)
    torch.library.opcheck(ops.conv_fused_affine_relu.default, base + (True,))
    torch.library.opcheck(ops.conv_fused_affine_relu.default, base + (True, torch.randn(km.num_out, 4)))
    grads = [t.clone().requires_grad_() for t in (x.feats, weight)]
    torch.library.opcheck(ops.conv_fused_affine_relu.default, (*grads, *base[2:], False))


def test_bad_epilogue_operands_raise():
    x = random_tensor(num_points=60, channels=3, span=5, seed=4, dtype=torch.float32)
    km = ps.kernel_map(x, 3)
    base = (x.feats, torch.randn(27, 3, 4), km.offset_ptr, km.in_idx, km.out_idx, km.num_out, 13)
    scale, shift = affine(4, torch.float32)
    with pytest.raises(ValueError, match="scale must be"):
        ops.conv_fused_affine_relu(*base, torch.ones(5), shift, True)
    with pytest.raises(TypeError, match="shift must have"):
        ops.conv_fused_affine_relu(*base, scale, shift.double(), True)
    with pytest.raises(ValueError, match="residual"):
        ops.conv_fused_affine_relu(*base, scale, shift, True, torch.randn(km.num_out + 1, 4))
    half = (x.feats.half(), torch.randn(27, 3, 4).half()) + base[2:]
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.conv_fused_affine_relu(*half, scale.half(), shift.half(), True)


@pytest.mark.parametrize("dataflow", [Dataflow.FUSED, Dataflow.GATHER_GEMM_SCATTER, Dataflow.IMPLICIT_GEMM])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv3d_with_an_epilogue_equals_conv3d_then_the_affine(dataflow, with_bias):
    x = random_tensor(num_points=800, channels=6, span=12, seed=3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(27, 6, 8, generator=gen) / 6
    bias = torch.randn(8, generator=gen) if with_bias else None
    scale, shift = affine(8, torch.float32)
    residual = x.with_feats(torch.randn(x.feats.shape[0], 8, generator=gen))
    config = ConvConfig(dataflow=dataflow)
    plain = F.conv3d(x, weight, bias=bias, config=config)
    got = F.conv3d(x, weight, bias=bias, config=config, epilogue=F.Epilogue(scale, shift, True, residual))
    assert got.coords is plain.coords and got.stride == plain.stride
    torch.testing.assert_close(got.feats, reference(plain.feats, scale, shift, True, residual.feats),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="output coordinates"):
        moved = ps.SparseTensor(residual.feats, residual.coords.flip(0))
        F.conv3d(x, weight, config=config, epilogue=F.Epilogue(scale, shift, True, moved))


def test_an_epilogue_outside_the_fused_kernels_is_applied_after_the_conv():
    # float64 scale with float32 features, and autocast: torch's arithmetic after the conv, the
    # result in the conv output's dtype (as after a batch norm module).
    x = random_tensor(num_points=300, channels=4, span=8, seed=6, dtype=torch.float32)
    weight = torch.randn(27, 4, 5)
    scale, shift = affine(5, torch.float64)
    plain = F.conv3d(x, weight)
    got = F.conv3d(x, weight, epilogue=F.Epilogue(scale, shift, relu=True))
    assert got.feats.dtype == torch.float32
    torch.testing.assert_close(got.feats, reference(plain.feats, scale, shift, True).float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = F.conv3d(x, weight, epilogue=F.Epilogue(scale.float(), shift.float(), relu=True))
    assert mixed.feats.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.feats.float(), reference(plain.feats, scale.float(), shift.float(), True),
                               rtol=0.05, atol=0.05)


def conv_and_norm(c_in, c_out, relu, dtype):
    torch.manual_seed(0)
    conv = spnn.SparseConv3d(c_in, c_out, 3).to(dtype)
    bn = (spnn.BatchNormReLU(c_out) if relu else spnn.BatchNorm(c_out)).to(dtype)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    ref = torch.nn.BatchNorm1d(c_out).to(dtype)
    ref.load_state_dict(bn.state_dict())
    return conv, bn, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("grad", [False, True])
def test_conv_norm_in_eval_mode_equals_the_separate_modules(dtype, relu, with_residual, grad):
    conv, bn, ref = conv_and_norm(5, 7, relu, dtype)
    conv.eval(), bn.eval(), ref.eval()
    x = random_tensor(num_points=900, channels=5, span=12, seed=8, dtype=dtype)
    residual = x.with_feats(torch.randn(x.feats.shape[0], 7, dtype=dtype)) if with_residual else None
    calls = []
    conv.register_forward_pre_hook(lambda m, args: calls.append(args[0]))
    with torch.set_grad_enabled(grad):
        got = spnn.conv_norm(conv, bn, x, residual)
    assert len(calls) == 1 and calls[0] is x  # hooks of the conv module see the fused call
    with torch.no_grad():
        ref.relu = relu
        want = torch.relu(ref(conv(x).feats) + residual.feats) if with_residual else ref(conv(x).feats)
        want = torch.relu(want) if relu else want
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(got.feats, want, **tol)
    if grad:  # eval-mode fine-tuning: gradients reach the conv's weight and the norm's affine
        got.feats.square().sum().backward()
        assert conv.weight.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None


def test_conv_norm_in_training_mode_is_the_modules_one_after_the_other():
    conv, bn, _ = conv_and_norm(5, 7, True, torch.float32)
    x = random_tensor(num_points=500, channels=5, span=10, seed=9, dtype=torch.float32)
    got = spnn.conv_norm(conv, bn, x)
    conv2, bn2, _ = conv_and_norm(5, 7, True, torch.float32)
    want = bn2(conv2(x))
    torch.testing.assert_close(got.feats, want.feats)
    torch.testing.assert_close(bn.running_mean, bn2.running_mean)  # the batch statistics were taken
    assert bn.epilogue() is None
    bn.eval()
    assert bn.epilogue() is not None
    with pytest.raises(ValueError, match="relu must be off"):
        bn.epilogue(x)


def test_a_minkunet_gives_the_same_logits_with_its_norms_inside_the_convs_or_separate(monkeypatch):
    from pointsparse.models import minkunet18

    torch.manual_seed(0)
    model = minkunet18(cr=0.25)
    # Running statistics away from (0, 1), so that the norms matter.
    for module in model.modules():
        if isinstance(module, spnn.BatchNorm):
            with torch.no_grad():
                module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 1.5)
    model.eval()
    coords = torch.unique(torch.cat([torch.zeros(3000, 1, dtype=torch.int32),
                                     torch.randint(0, 40, (3000, 3), dtype=torch.int32)], 1), dim=0)
    x = ps.SparseTensor(torch.randn(coords.shape[0], 4), coords)
    with torch.no_grad():
        fused = model(x)
        monkeypatch.setattr(spnn.BatchNorm, "epilogue", lambda self, residual=None: None)
        monkeypatch.setattr(norm, "fused_on", lambda f: False)  # torch's batch norm, separate passes
        plain = model(ps.SparseTensor(x.feats, x.coords))
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph_of_blocks_with_their_norms_inside_the_convs():
    from pointsparse.models.minkunet import ConvBNReLU, ResidualBlock

    torch.manual_seed(0)
    net = torch.nn.Sequential(ConvBNReLU(3, 8), ResidualBlock(8, 16)).eval()
    x = random_tensor(num_points=200, seed=9, dtype=torch.float32)
    with torch.no_grad():
        eager = net(x)  # builds the maps into x.cache
        compiled = torch.compile(lambda f: net(x.with_feats(f)).feats, fullgraph=True)
        torch.testing.assert_close(compiled(x.feats.clone()), eager.feats)


def implicit_case(dtype=torch.float32, c_in=6, c_out=9, device="cpu"):
    x = random_tensor(num_points=500, channels=c_in, span=10, seed=4, dtype=dtype, device=device)
    kmap = ps.kernel_map(x, 3)
    reordering = ps.dataflows.implicit.reordering(kmap, ps.ImplicitGemmConfig(32, True, 2))
    weight = torch.randn(27, c_in, c_out, generator=torch.Generator().manual_seed(5), dtype=dtype).to(device)
    return x, kmap, reordering, weight


def test_the_implicit_epilogue_op_equals_the_conv_then_the_affine():
    # The reference the CUDA kernels' store is held to (tests/test_implicit_kernels.py), and its checks.
    x, kmap, reordering, weight = implicit_case(torch.float64)
    scale, shift = affine(9, torch.float64)
    residual = torch.randn(kmap.num_out, 9, dtype=torch.float64)
    args = (x.feats, weight, kmap.neighbors, reordering.order, reordering.tile_masks, 32)
    conv = ps.ops.conv_implicit(*args[:5], kmap.neighbors_t, reordering.order, reordering.tile_masks, *kmap.pairs, 32)
    for relu, res in ((True, residual), (False, None)):
        got = ps.ops.conv_implicit_affine_relu(*args, scale, shift, relu, res)
        torch.testing.assert_close(got, reference(conv, scale, shift, relu, res))
    torch.library.opcheck(ops.conv_implicit_affine_relu.default, (*args, scale, shift, True, residual),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match=r"scale must have shape \[C_out = 9\]"):
        ps.ops.conv_implicit_affine_relu(*args, scale[:4], shift, True)
    with pytest.raises(TypeError, match="residual dtype"):
        ps.ops.conv_implicit_affine_relu(*args, scale, shift, True, residual.float())
    with pytest.raises(ValueError, match="residual must have shape"):
        ps.ops.conv_implicit_affine_relu(*args, scale, shift, True, residual[:-1])


@pytest.mark.parametrize("python_twin", [False, True], ids=["cpp", "python"])
def test_autocast_casts_the_epilogue_ops_operands_but_its_scale_and_shift(python_twin):
    # The kernel reads scale and shift in float32: rounding them to half would lose a batch norm's digits.
    x, kmap, reordering, weight = implicit_case(torch.float32)
    scale = 1 + torch.arange(9, dtype=torch.float32) / 1000  # not bfloat16 values
    shift = torch.linspace(-1, 1, 9) / 3
    residual = torch.randn(kmap.num_out, 9)
    table = (kmap.neighbors, reordering.order, reordering.tile_masks, 32)
    op = ops.conv_implicit_affine_relu.default
    if python_twin:  # what torch.compile's tracing runs
        op = op.py_kernels[torch._C.DispatchKey.AutocastCPU]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op(x.feats, weight, *table, scale, shift, True, residual)
    bf16 = torch.bfloat16
    expected = ops.conv_implicit_affine_relu(x.feats.to(bf16), weight.to(bf16), *table, scale, shift, True,
                                             residual.to(bf16))
    assert got.dtype == bf16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    rounded = ops.conv_implicit_affine_relu(x.feats.to(bf16), weight.to(bf16), *table, scale.to(bf16),
                                            shift.to(bf16), True, residual.to(bf16))
    assert not torch.equal(rounded, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_autocast_inference_epilogue_runs_in_the_cuda_implicit_kernel(monkeypatch):
    # Under autocast (fp16 inference with AMP) the epilogue still runs in the kernel's store: the
    # features, weight and residual cast to half, scale and shift read in float32.
    x, kmap, reordering, weight = implicit_case(torch.float32, 16, 32, "cuda")
    scale, shift = (t.cuda() for t in affine(32, torch.float32))
    residual = ps.SparseTensor._derive(torch.randn(x.coords.shape[0], 32, device="cuda"), x.coords, x.stride,
                                       x.cache, None)
    config = ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM)
    calls = []
    original = ps.ops.conv_implicit_affine_relu
    monkeypatch.setattr(ps.ops, "conv_implicit_affine_relu", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        fused = F.conv3d(x, weight, kernel_size=3, config=config, epilogue=F.Epilogue(scale, shift, True, residual))
        plain = F.conv3d(x, weight, kernel_size=3, config=config)
    assert calls == [1] and fused.feats.dtype == torch.float16
    expected = reference(plain.feats.float(), scale, shift, True, residual.feats.half().float())
    torch.testing.assert_close(fused.feats.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_an_inference_epilogue_runs_in_the_cuda_implicit_kernel(monkeypatch, dtype):
    # conv3d on CUDA in inference hands the epilogue to the implicit GEMM's store; the result equals
    # the conv followed by the affine (one rounding fewer), and training still takes the unfused path.
    x, kmap, reordering, weight = implicit_case(dtype, 16, 32, "cuda")
    scale, shift = (t.to(dtype).cuda() for t in affine(32, torch.float32))
    residual = ps.SparseTensor._derive(torch.randn(x.coords.shape[0], 32, dtype=dtype, device="cuda"), x.coords,
                                       x.stride, x.cache, None)
    config = ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM)
    calls = []
    original = ps.ops.conv_implicit_affine_relu
    monkeypatch.setattr(ps.ops, "conv_implicit_affine_relu", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        fused = F.conv3d(x, weight, kernel_size=3, config=config, epilogue=F.Epilogue(scale, shift, True, residual))
        plain = F.conv3d(x, weight, kernel_size=3, config=config)
    assert calls == [1]
    expected = reference(plain.feats.float(), scale.float(), shift.float(), True, residual.feats.float())
    torch.testing.assert_close(fused.feats.float(), expected, rtol=2e-2, atol=2e-2)
    F.conv3d(x.with_feats(x.feats.requires_grad_()), weight, kernel_size=3, config=config,
             epilogue=F.Epilogue(scale, shift, True, residual))
    assert calls == [1]
