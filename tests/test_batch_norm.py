"""Batch norm with a fused ReLU (and a residual block's fused end) against torch's BatchNorm1d (+ add, ReLU):
outputs, gradients, running
statistics, eval mode, determinism across thread counts, and the paths it leaves to torch."""

import pytest
import torch

import pointsparse as ps
from pointsparse.ops import norm

from helpers import DEVICES


def features(n=3000, c=20, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=dtype) * 3 + 2          # a large mean tests the variance
    coords = torch.cat([torch.zeros(n, 1, dtype=torch.int32), torch.arange(n, dtype=torch.int32)[:, None].repeat(1, 3)], 1)
    return x.to(device), coords.to(device)


def pair(c, relu, momentum, dtype, device, seed=1):
    ours = (ps.nn.BatchNormReLU(c, momentum=momentum) if relu else ps.nn.BatchNorm(c, momentum=momentum))
    ref = torch.nn.BatchNorm1d(c, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(c, generator=gen))
        ref.bias.copy_(torch.randn(c, generator=gen))
    ours.load_state_dict(ref.state_dict())
    return ours.to(device, dtype), ref.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_torch_batch_norm_then_relu(device, dtype, relu, momentum):
    ours, ref = pair(20, relu, momentum, dtype, device)
    x, coords = features(dtype=dtype, device=device)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for step in range(3):  # running statistics accumulate over steps (momentum None: cumulative)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = ours(ps.SparseTensor(a, coords)).feats
        yb = ref(b)
        yb = torch.relu(yb) if relu else yb
        torch.testing.assert_close(ya, yb, **tol)
        probe = torch.randn(ya.shape, generator=torch.Generator().manual_seed(step), dtype=dtype).to(device)
        ya.backward(probe)
        yb.backward(probe)
        torch.testing.assert_close(a.grad, b.grad, **tol)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol)
        ours.zero_grad(), ref.zero_grad()
        x = x * 0.5 + 1
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **tol)
    torch.testing.assert_close(ours.running_var, ref.running_var, **tol)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(ours(ps.SparseTensor(x, coords)).feats, torch.relu(want) if relu else want, **tol)
    # Eval mode with gradients (frozen statistics, e.g. fine-tuning): gradients as torch's.
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(ps.SparseTensor(a, coords)).feats, ref(b)
    yb = torch.relu(yb) if relu else yb
    (ya * ya).sum().backward()
    (yb * yb).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, **tol)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)


def test_gradcheck_of_the_fused_function():
    x, _ = features(n=40, c=6)
    weight = torch.randn(6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    for relu in (False, True):
        assert torch.autograd.gradcheck(
            lambda f, w, b: norm.batch_norm_relu(f, None, None, w, b, True, 0.1, 1e-5, relu),
            (x.clone().requires_grad_(), weight, bias))


def test_results_do_not_depend_on_the_thread_count():
    x, coords = features(n=20000, c=24, dtype=torch.float32)
    probe = torch.randn(x.shape)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            layer = ps.nn.BatchNormReLU(24)
            a = x.clone().requires_grad_()
            y = layer(ps.SparseTensor(a, coords)).feats
            y.backward(probe)
            results.append((y, a.grad, layer.weight.grad, layer.running_var))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert torch.equal(got, want)


def test_other_dtypes_and_autocast_run_torchs_kernels():
    x, coords = features(n=500, c=8, dtype=torch.bfloat16)
    layer = ps.nn.BatchNormReLU(8).to(torch.bfloat16)
    assert not norm.fused_on(x)
    y = layer(ps.SparseTensor(x, coords)).feats
    assert y.dtype == torch.bfloat16 and bool((y >= 0).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not norm.fused_on(x.float())


def test_a_norm_then_relu_checkpoint_loads_into_the_fused_module():
    separate = torch.nn.Sequential(ps.nn.SparseConv3d(4, 8, 3), ps.nn.BatchNorm(8), ps.nn.ReLU(True))
    fused = torch.nn.Sequential(ps.nn.SparseConv3d(4, 8, 3), ps.nn.BatchNormReLU(8))
    fused.load_state_dict(separate.state_dict())
    x, coords = features(n=200, c=4, dtype=torch.float32)
    x = ps.SparseTensor(x, coords)
    separate.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x).feats, separate(x).feats)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"\[C = 4\]"):
        norm.affine_relu(x, torch.ones(3), torch.zeros(4), True)
    with pytest.raises(TypeError, match="float32 or float64"):
        norm.channel_moments(x.half())
    with pytest.raises(ValueError, match="at least one row"):
        norm.channel_moments(torch.empty(0, 4))
    with pytest.raises(ValueError, match="residual"):
        norm.affine_relu(x, torch.ones(4), torch.zeros(4), True, torch.randn(9, 4))
    with pytest.raises(TypeError, match="residual and x dtypes"):
        norm.affine_relu(x, torch.ones(4), torch.zeros(4), True, torch.randn(10, 4, dtype=torch.float64))
    coords = features(n=10, c=4)[1]
    with pytest.raises(ValueError, match="relu must be off"):
        ps.nn.BatchNormReLU(4).add_relu(ps.SparseTensor(x, coords), ps.SparseTensor(x, coords))


@pytest.mark.parametrize("relu", [False, True])
def test_opcheck_of_the_norm_ops(relu):
    x = torch.randn(30, 5)
    w, b = torch.randn(5), torch.randn(5)
    mean, var = norm.channel_moments(x)
    ops = torch.ops.pointsparse
    torch.library.opcheck(ops.channel_moments.default, (x,))
    torch.library.opcheck(ops.affine_relu.default, (x, w, b, relu))
    torch.library.opcheck(ops.affine_relu.default, (x, w, b, relu, torch.randn(30, 5)))
    torch.library.opcheck(ops.batch_norm_relu_backward.default, (torch.randn(30, 5), x, mean, torch.rsqrt(var + 1e-5),
                                                                 w, b, relu))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_add_relu_is_a_residual_blocks_end(device, dtype, training):
    # relu(norm(x) + residual) against torch's BatchNorm1d, the addition and a ReLU: outputs, gradients
    # of x, the residual and the affine parameters, running statistics; in eval mode on the CPU the one
    # fused pass (affine_relu with a residual).
    ours, ref = pair(20, False, 0.1, dtype, device)
    ours.train(training), ref.train(training)
    x, coords = features(dtype=dtype, device=device)
    residual = features(dtype=dtype, device=device, seed=5)[0] - 2
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ra, rb = residual.clone().requires_grad_(), residual.clone().requires_grad_()
    ya = ours.add_relu(ps.SparseTensor(a, coords), ps.SparseTensor(ra, coords)).feats
    yb = torch.relu(ref(b) + rb)
    torch.testing.assert_close(ya, yb, **tol)
    probe = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3), dtype=dtype).to(device)
    ya.backward(probe)
    yb.backward(probe)
    for got, want in ((a.grad, b.grad), (ra.grad, rb.grad), (ours.weight.grad, ref.weight.grad),
                      (ours.bias.grad, ref.bias.grad)):
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **tol)
    with pytest.raises(ValueError, match="coordinates"):
        ours.add_relu(ps.SparseTensor(x, coords), ps.SparseTensor(residual, coords.flip(0)))


def test_gradcheck_of_the_residual_affine_relu():
    x, _ = features(n=40, c=6)
    scale, shift = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    residual = torch.randn(40, 6, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, scale, shift, residual)]
    assert torch.autograd.gradcheck(lambda f, a, b, r: norm.affine_relu(f, a, b, True, r), inputs)


def test_a_minkunet_gives_the_same_logits_with_and_without_the_fused_residual_end():
    from pointsparse.models import minkunet18

    torch.manual_seed(0)
    model = minkunet18(cr=0.125).eval()
    x, coords = features(n=600, c=4, dtype=torch.float32)
    coords = torch.cat([torch.zeros(600, 1, dtype=torch.int32), torch.randint(0, 12, (600, 3), dtype=torch.int32)], 1)
    coords = torch.unique(coords, dim=0)
    x = ps.SparseTensor(torch.randn(coords.shape[0], 4), coords)
    with torch.no_grad():
        fused = model(x)
        norm.fused_on, saved = (lambda f: False), norm.fused_on  # torch's kernels, separate passes
        try:
            separate = model(x)
        finally:
            norm.fused_on = saved
    torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-4)


def test_the_eval_affine_follows_writes_that_bump_no_version():
    # An EMA model updates its copy through .data (no version bump): the next eval forward must see it.
    bn = ps.nn.BatchNorm(4).double().eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        before = bn.epilogue()
        bn.weight.data.mul_(3)
        bn.running_mean.data.add_(1)
        after = bn.epilogue()
    expected = norm.eval_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    torch.testing.assert_close((after.scale, after.shift), expected)
    torch.testing.assert_close(after.scale, 3 * before.scale)
