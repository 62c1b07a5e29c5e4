"""The ops' autograd kernels (pointsparse.ops.autograd_kernel): torch.library.register_autograd's
contract, with no walk of the schema per call."""

import pytest
import torch

from pointsparse import ConvConfig, Dataflow
from pointsparse.grouping import Grouping
from pointsparse import functional as F
from pointsparse.ops.autograd_kernel import register_autograd

from helpers import random_tensor

# A test op with a default argument: scaled(x, w, alpha=2.0) = alpha * x * w, elementwise.
_LIB = torch.library.Library("pointsparse_autograd_test", "DEF")
_LIB.define("scaled(Tensor x, Tensor w, float alpha=2.0) -> Tensor")
_LIB.impl("scaled", lambda x, w, alpha=2.0: alpha * x * w, "CompositeExplicitAutograd")
_LIB.define("bad_backward(Tensor x) -> Tensor")
_LIB.impl("bad_backward", lambda x: x * 1, "CompositeExplicitAutograd")
_LIB.define("keyword_only(Tensor x, *, int k) -> Tensor")
_LIB.define("listed(Tensor[] xs) -> Tensor")
SCALED = torch.ops.pointsparse_autograd_test.scaled
SEEN = []


def _scaled_setup(ctx, inputs, output):
    SEEN.append(inputs)
    x, w, alpha = inputs
    ctx.save_for_backward(x, w)
    ctx.alpha = alpha


def _scaled_backward(ctx, grad):
    x, w = ctx.saved_tensors
    SEEN.append(ctx.needs_input_grad)
    return (grad * ctx.alpha * w if ctx.needs_input_grad[0] else None,
            grad * ctx.alpha * x if ctx.needs_input_grad[1] else None, None)


register_autograd("pointsparse_autograd_test::scaled", _scaled_backward, _scaled_setup)


def test_the_kernel_fills_defaults_differentiates_and_sees_which_inputs_need_a_gradient():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64)
    SEEN.clear()
    SCALED(x, w).sum().backward()
    assert SEEN[0][2] == 2.0                               # the default, dropped by the dispatcher
    assert tuple(SEEN[1]) == (True, False)                 # no entry for the dispatch keyset
    torch.testing.assert_close(x.grad, 2.0 * w)
    assert torch.autograd.gradcheck(lambda a, b: SCALED(a, b, 0.5), (x, w.requires_grad_()))


def test_without_a_gradient_the_op_records_no_node():
    x = torch.randn(3)
    SEEN.clear()
    assert SCALED(x, x).grad_fn is None
    with torch.no_grad():
        assert SCALED(x.requires_grad_(), x).grad_fn is None
    assert SEEN == []  # the op ran below autograd directly, no autograd.Function around it


def test_a_backward_with_the_wrong_number_of_gradients_raises():
    register_autograd("pointsparse_autograd_test::bad_backward", lambda ctx, grad: (grad, grad),
                      lambda ctx, inputs, output: None)
    with pytest.raises(RuntimeError, match="one gradient per input"):
        torch.ops.pointsparse_autograd_test.bad_backward(torch.ones(2, requires_grad=True)).sum().backward()


@pytest.mark.parametrize("name", ["keyword_only", "listed"])
def test_ops_with_keyword_only_arguments_or_tensor_lists_are_refused(name):
    with pytest.raises(NotImplementedError, match="positional arguments and no tensor lists"):
        register_autograd(f"pointsparse_autograd_test::{name}", lambda ctx, grad: (grad,),
                          lambda ctx, inputs, output: None)


CONFIGS = {
    "gather_scatter": ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER),
    "grouped": ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER, grouping=Grouping.DENSE),
    "fused": ConvConfig(dataflow=Dataflow.FUSED),
    "implicit": ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("with_epilogue", [False, True])
def test_a_training_conv_never_walks_the_schema_per_call(name, with_epilogue, monkeypatch):
    """Every op the convs differentiate through (conv_fused_affine_relu and affine_relu with an
    epilogue) runs the autograd kernel above, not torch's."""
    x = random_tensor(num_points=40, channels=4)
    x.feats.requires_grad_()
    weight = torch.randn(27, 4, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(6, dtype=torch.float64, requires_grad=True)
    epilogue = F.Epilogue(scale, torch.zeros(6, dtype=torch.float64), relu=True) if with_epilogue else None
    F.conv3d(x, weight, config=CONFIGS[name], epilogue=epilogue)  # the map is built outside the patch

    def walk(*args):
        raise AssertionError("torch's autograd kernel walked the schema")

    monkeypatch.setattr(torch._library.utils, "fill_defaults", walk)
    out = F.conv3d(x, weight, config=CONFIGS[name], epilogue=epilogue)
    out.feats.square().sum().backward()
    assert weight.grad.abs().sum() > 0 and x.feats.grad.abs().sum() > 0
    if with_epilogue:
        assert scale.grad.abs().sum() > 0
