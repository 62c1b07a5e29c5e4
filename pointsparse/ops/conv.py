"""The convolution ops' shared conventions and the registration of the pair-based ones.

One module per dataflow holds its typed wrappers, fake kernels and autograd:
:mod:`.conv_ggs` (gather-GEMM-scatter, grouped), :mod:`.conv_fused` and :mod:`.conv_implicit`.

Pairs come from a :class:`~pointsparse.kmap.KernelMap` in CSR form: ``offset_ptr`` int64 ``[K + 1]``
(on the CPU: it sizes the GEMMs), ``in_idx`` / ``out_idx`` int32 ``[P]`` 0-based rows on the
features' device. ``identity_offset`` is -1 or an offset whose pairs are ``i -> i`` for every row
(the centre of a submanifold odd kernel), computed without gather or scatter. Within one offset
an output row occurs at most once (true of every kernel map, forwards and swapped): the pairs of
one offset are written in parallel without atomics.

Four op families compute the same convolution: ``conv_gather_scatter`` (gather, one ATen GEMM per
offset, scatter-add; every device), ``conv_grouped`` (offsets grouped into zero-padded batched
GEMMs by a plan, output-stationary scatter; every device), ``conv_fused`` (register-blocked tiles
that read, multiply and add rows in place; CPU only) and ``conv_implicit`` (output-stationary
implicit GEMM over the neighbour table, rows reordered by mask; every device). Each differentiates
through its own dataflow.

Dtypes: float64, float32, float16 and bfloat16 (feats, weight and grad_out share one). Half and
bfloat16 sum the offsets in float32 and round once. Under ``torch.autocast`` the ops cast their
floating inputs to the autocast dtype and return it (see :mod:`.autocast`).

Index bounds: on the CPU every call checks them (a parallel pass). On CUDA reading a range back
would stall the host on every call, so the kernels assert each index (a device-side assert, as in
torch's own indexing) and :class:`~pointsparse.kmap.KernelMap` checks the range once, when a map
is built or handed in.
"""

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .autocast import register_autocast
from .autograd_kernel import register_autograd

OPS = torch.ops.pointsparse


def _forward_fake(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset):
    return feats.new_empty((num_out, weight.shape[2]))


def _weight_grad_fake(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset):
    return feats.new_empty((offset_ptr.shape[0] - 1, feats.shape[1], grad_out.shape[1]))


def _setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    feats, weight, offset_ptr, in_idx, out_idx, _num_out, identity_offset = inputs
    ctx.save_for_backward(feats, weight, offset_ptr, in_idx, out_idx)
    ctx.identity_offset = identity_offset


def _make_backward(forward: Callable, weight_grad: Callable):
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        feats, weight, offset_ptr, in_idx, out_idx = ctx.saved_tensors
        grad = grad.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            # The adjoint runs the same pairs backwards: out -> in with weight[k]^T [C_out, C_in].
            grad_feats = forward(grad, weight.transpose(1, 2), offset_ptr, out_idx, in_idx,
                                 feats.shape[0], ctx.identity_offset)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad(feats, grad, offset_ptr, in_idx, out_idx, ctx.identity_offset)
        return grad_feats, grad_weight, None, None, None, None, None

    return backward


def register_pairs_op(forward: Callable, weight_grad: Callable) -> None:
    """Fake kernels, autograd and autocast of a conv over CSR pairs and its weight gradient (the
    input gradient runs the same pairs backwards through ``forward``)."""
    torch.library.register_fake(f"pointsparse::{forward.__name__}")(_forward_fake)
    torch.library.register_fake(f"pointsparse::{weight_grad.__name__}")(_weight_grad_fake)
    register_autograd(f"pointsparse::{forward.__name__}", _make_backward(forward, weight_grad),
                      setup_context=_setup_context)
    register_autocast(f"pointsparse::{forward.__name__}")
    register_autocast(f"pointsparse::{weight_grad.__name__}")
