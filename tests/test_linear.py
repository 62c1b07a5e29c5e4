"""spnn.Linear: torch's nn.Linear over features, through the fused CPU kernels where they run."""

import pytest
import torch
from torch import nn

import pointsparse.nn as spnn
import pointsparse.nn.feature_ops as feature_ops
from pointsparse.ops.conv_fused import linear_fused

from helpers import random_tensor


def pair(c_in, c_out, bias, dtype, seed=0):
    """An spnn.Linear and an nn.Linear with the same parameters."""
    torch.manual_seed(seed)
    ours = spnn.Linear(c_in, c_out, bias=bias, dtype=dtype)
    theirs = nn.Linear(c_in, c_out, bias=bias, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (96, 19), (33, 70), (5, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_torch_forward_and_backward(dtype, c_in, c_out, bias):
    ours, theirs = pair(c_in, c_out, bias, dtype)
    x = torch.randn(1000, c_in, dtype=dtype)
    grad = torch.randn(1000, c_out, dtype=dtype)
    results = []
    for module in (ours, theirs):
        feats = x.clone().requires_grad_()
        y = module(feats)
        y.backward(grad)
        results.append((y, feats.grad, module.weight.grad) + ((module.bias.grad,) if bias else ()))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, ref in zip(*results):
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol * max(1.0, ref.abs().max().item()))


def test_linear_runs_the_fused_kernels_on_cpu_features_and_torch_otherwise(monkeypatch):
    ours, theirs = pair(8, 3, True, torch.float32)
    calls = []
    real = feature_ops.linear_fused
    monkeypatch.setattr(feature_ops, "linear_fused", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(50, 8)
    ours(x)
    assert len(calls) == 1
    # Not [N, C_in], under autocast, or a dtype the weight does not have: torch's nn.Linear.
    torch.testing.assert_close(ours(x.view(5, 10, 8)), theirs(x.view(5, 10, 8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).dtype == torch.bfloat16
    with pytest.raises(RuntimeError):
        ours(x.double())  # as nn.Linear: a dtype mismatch is an error, not a silent cast
    assert len(calls) == 1


def test_linear_takes_a_sparse_tensor_and_keeps_its_coordinates():
    ours, theirs = pair(3, 4, True, torch.float64)
    x = random_tensor(num_points=200, channels=3, dtype=torch.float64)
    y = ours(x)
    assert torch.equal(y.coords, x.coords) and y.stride == x.stride
    torch.testing.assert_close(y.feats, theirs(x.feats))


def test_linear_loads_an_nn_linear_checkpoint_and_has_its_names():
    ours, theirs = pair(6, 2, True, torch.float32)
    assert list(ours.state_dict()) == ["weight", "bias"]
    fresh = spnn.Linear(6, 2)
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(fresh.weight, theirs.weight)


def test_gradcheck_of_the_fused_linear():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(linear_fused, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: linear_fused(x, w), (x, w))


def test_empty_features_give_an_empty_output():
    ours, theirs = pair(4, 3, True, torch.float32)
    assert ours(torch.zeros(0, 4)).shape == (0, 3)


def test_torch_compile_fullgraph_of_the_fused_linear():
    ours, theirs = pair(16, 5, True, torch.float32)
    x = torch.randn(300, 16)
    compiled = torch.compile(ours, fullgraph=True)
    torch.testing.assert_close(compiled(x), theirs(x))
