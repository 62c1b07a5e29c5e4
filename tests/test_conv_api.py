"""Conv ops under opcheck and torch.compile, the nn modules, empty tensors and bad inputs."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, SparseTensor
from pointsparse import functional as F
from pointsparse import nn as spnn

from helpers import DEVICES, assert_compiles_fullgraph, random_tensor, skip_unless_runs


def conv_op_cases(device):
    x = random_tensor(num_points=30, channels=3, seed=8, device=device, dtype=torch.float32)
    subm = ps.kernel_map(x, 3)
    down = ps.kernel_map(x, 2, 2)
    weight = torch.randn(27, 3, 5, device=device, requires_grad=True)
    weight2 = torch.randn(8, 3, 5, device=device, requires_grad=True)
    feats = x.feats.clone().requires_grad_()
    grad = torch.randn(down.num_out, 5, device=device)
    ops = torch.ops.pointsparse
    return [
        (ops.conv_gather_scatter.default,
         (feats, weight, subm.offset_ptr, subm.in_idx, subm.out_idx, subm.num_out, 13)),
        (ops.conv_gather_scatter.default,
         (feats, weight2, down.offset_ptr, down.in_idx, down.out_idx, down.num_out, -1)),
        (ops.conv_weight_grad.default,
         (x.feats, grad, down.offset_ptr, down.in_idx, down.out_idx, -1)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("fused", [False, True])
def test_conv_opcheck(device, case, fused):
    if fused and device != "cpu":
        pytest.skip("the fused ops run on the CPU only")
    op, args = conv_op_cases(device)[case]
    if fused:
        op = {"conv_gather_scatter": torch.ops.pointsparse.conv_fused,
              "conv_weight_grad": torch.ops.pointsparse.conv_fused_weight_grad}[op._opname].default
    torch.library.opcheck(op, args)


def two_layer_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(spnn.SparseConv3d(3, 8, 3), spnn.ReLU(), spnn.SparseConv3d(8, 4, 2, stride=2))


def test_torch_compile_matches_eager():
    net = two_layer_net()
    x = random_tensor(num_points=50, seed=9, dtype=torch.float32)
    eager = net(x)
    compiled = torch.compile(net)(SparseTensor(x.feats, x.coords))
    torch.testing.assert_close(compiled.feats, eager.feats)
    torch.testing.assert_close(compiled.coords, eager.coords)
    grad_eager = torch.autograd.grad(eager.feats.square().sum(), net[0].weight)[0]
    grad_compiled = torch.autograd.grad(compiled.feats.square().sum(), net[0].weight)[0]
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataflow", [ps.Dataflow.GATHER_GEMM_SCATTER, ps.Dataflow.FUSED])
def test_torch_compile_fullgraph_of_cached_convs(device, dataflow):
    # With the kernel maps cached the whole network, forward and backward, is one graph.
    skip_unless_runs(dataflow, device)
    assert_compiles_fullgraph(ps.ConvConfig(dataflow=dataflow), device)


def test_module_parameters_and_initialisation():
    conv = spnn.SparseConv3d(16, 32, 3, bias=True)
    assert conv.weight.shape == (27, 16, 32) and conv.bias.shape == (32,)
    bound = 1 / (16 * 27) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 3
    transposed = spnn.SparseConv3d(16, 32, 2, stride=2, transposed=True)
    assert transposed.weight.abs().max() <= 1 / (32 * 8) ** 0.5
    assert spnn.SparseConv3d(4, 4, (3, 1, 3)).weight.shape == (9, 4, 4)


def test_sequential_network_with_every_feature_module():
    x = random_tensor(num_points=40, seed=10, dtype=torch.float32)
    net = torch.nn.Sequential(spnn.SparseConv3d(3, 6, 3), spnn.BatchNorm(6), spnn.LeakyReLU(0.1),
                              spnn.SparseConv3d(6, 6, 2, stride=2), spnn.ReLU(),
                              spnn.SparseConv3d(6, 4, 2, stride=2, transposed=True))
    y = net(x)
    assert torch.equal(y.coords, x.coords) and y.feats.shape == (x.coords.shape[0], 4)
    y.feats.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_feature_ops_cat_add_and_global_pools():
    x = random_tensor(num_points=30, seed=11, dtype=torch.float32)
    both = F.cat([x, x.with_feats(2 * x.feats)])
    assert both.feats.shape == (x.coords.shape[0], 6)
    torch.testing.assert_close((x + x).feats, 2 * x.feats)
    batch = x.coords[:, 0]
    for b in range(x.batch_size):
        torch.testing.assert_close(spnn.GlobalAvgPool()(x)[b], x.feats[batch == b].mean(0))
        torch.testing.assert_close(spnn.GlobalMaxPool()(x)[b], x.feats[batch == b].max(0).values)
    other = random_tensor(num_points=30, seed=12, dtype=torch.float32)
    with pytest.raises(ValueError, match="equal coordinates"):
        x + other
    with pytest.raises(ValueError, match="equal coordinates"):
        F.cat([x, other])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,stride,transposed", [(3, 1, False), (1, 1, False), (3, 2, False), (3, 2, True)])
@pytest.mark.parametrize("dataflow", [Dataflow.AUTO, Dataflow.GATHER_GEMM_SCATTER, Dataflow.IMPLICIT_GEMM])
def test_empty_tensors_pass_through(device, size, stride, transposed, dataflow):
    x = SparseTensor(torch.zeros(0, 3, device=device), torch.zeros(0, 4, dtype=torch.int32, device=device))
    if transposed:  # the coarse tensor a transposed conv returns from
        x = spnn.SparseConv3d(3, 3, 2, stride=2).to(device)(x)
        assert x.stride == (2, 2, 2)
    conv = spnn.SparseConv3d(3, 5, size, stride=stride, transposed=transposed,
                             config=ConvConfig(dataflow=dataflow)).to(device)
    y = conv(x)
    assert y.stride == ((1, 1, 1) if transposed else (stride,) * 3)
    assert y.feats.shape == (0, 5) and y.coords.shape == (0, 4)
    y.feats.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() == 0


def test_bad_conv_inputs_raise():
    x = random_tensor(num_points=10, seed=13, dtype=torch.float32)
    with pytest.raises(ValueError, match="input channels"):
        spnn.SparseConv3d(4, 2)(x)
    with pytest.raises(TypeError, match="dtype"):
        F.conv3d(x, torch.randn(27, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[K=27"):
        F.conv3d(x, torch.randn(8, 3, 2))
    with pytest.raises(ValueError, match="bias must have shape"):
        F.conv3d(x, torch.randn(27, 3, 2), bias=torch.randn(3))
    with pytest.raises(TypeError, match="floating point"):
        F.conv3d(x.with_feats(x.feats.int()), torch.randn(27, 3, 2).int())
    with pytest.raises(TypeError, match="int32"):
        SparseTensor(x.feats, x.coords.float())
    with pytest.raises(TypeError, match="SparseTensor"):
        F.conv3d(x.feats, torch.randn(27, 3, 2))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            F.conv3d(x, torch.randn(27, 3, 2, device="cuda"))


@pytest.mark.parametrize("op", [ps.ops.conv_gather_scatter, ps.ops.conv_fused])
def test_bad_pairs_raise_in_the_op(op):
    x = random_tensor(num_points=10, seed=14, dtype=torch.float32)
    km = ps.kernel_map(x, 3)
    w = torch.randn(27, 3, 2)
    with pytest.raises(ValueError, match="in_idx must index rows"):
        op(x.feats, w, km.offset_ptr, km.in_idx + 1000, km.out_idx, km.num_out)
    with pytest.raises(ValueError, match="offset_ptr must have shape"):
        op(x.feats, w, km.offset_ptr[:-1], km.in_idx, km.out_idx, km.num_out)
    with pytest.raises(TypeError, match="int32"):
        op(x.feats, w, km.offset_ptr, km.in_idx.long(), km.out_idx, km.num_out)
    with pytest.raises(ValueError, match="identity_offset"):
        op(x.feats, w, km.offset_ptr, km.in_idx, km.out_idx, km.num_out, 27)
