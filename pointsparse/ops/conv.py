"""Typed wrappers over the convolution ops, their fake kernels and their autograd.

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

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .autocast import register_autocast

_ops = torch.ops.pointsparse
_lib = torch.library.Library("pointsparse", "IMPL")  # holds the autocast kernels for the process


def conv_gather_scatter(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                        out_idx: Tensor, num_out: int, identity_offset: int = -1) -> Tensor:
    """``out [num_out, C_out] = sum_k scatter(out_idx_k, feats[in_idx_k] @ weight[k])``.

    ``feats [N_in, C_in]``, ``weight [K, C_in, C_out]`` of one floating dtype. Differentiable in
    ``feats`` and ``weight``.
    """
    return _ops.conv_gather_scatter(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset)


def conv_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                     out_idx: Tensor, identity_offset: int = -1) -> Tensor:
    """``grad_weight [K, C_in, C_out]``, ``grad_weight[k] = feats[in_idx_k]^T @ grad_out[out_idx_k]``."""
    return _ops.conv_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset)


def conv_fused(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor,
               num_out: int, identity_offset: int = -1) -> Tensor:
    """:func:`conv_gather_scatter` computed by fused CPU kernels (float32 / float64)."""
    return _ops.conv_fused(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset)


def linear_fused(feats: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``torch.nn.functional.linear(feats, weight, bias)`` for features ``[N, C_in]`` and ``weight
    [C_out, C_in]``, as a 1x1 conv through the fused CPU kernels: the identity offset alone, one
    register-blocked pass over the rows (float32 / float64). Differentiable in every tensor."""
    n = feats.shape[0]
    rows = torch.arange(n, dtype=torch.int32)                                  # [N]: the identity pairs
    out = conv_fused(feats, weight.t().unsqueeze(0), torch.tensor([0, n]), rows, rows, n, 0)  # [N, C_out]
    return out if bias is None else out + bias


def conv_fused_affine_relu(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor,
                           num_out: int, identity_offset: int, scale: Tensor, shift: Tensor, relu: bool,
                           residual: Optional[Tensor] = None) -> Tensor:
    """``relu?(conv_fused(...) * scale + shift [+ residual])``: a conv ending in an eval-mode batch norm
    (``scale``, ``shift`` ``[C_out]``), a residual ``[num_out, C_out]`` and a ReLU, applied to each block
    of output rows as it is finished instead of in a pass of its own (CPU, float32 / float64).
    Differentiable in every tensor; the gradient of ``scale`` recomputes the convolution."""
    return _ops.conv_fused_affine_relu(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset,
                                       scale, shift, relu, residual)


def conv_fused_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                           out_idx: Tensor, identity_offset: int = -1) -> Tensor:
    """:func:`conv_weight_grad` computed by fused CPU kernels."""
    return _ops.conv_fused_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset)


def conv_grouped(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor,
                 out_pos: Tensor, in_pos: Tensor, num_out: int, identity_offset: int,
                 forward_plan: Sequence[int], input_grad_plan: Sequence[int],
                 weight_grad_plan: Sequence[int]) -> Tensor:
    """:func:`conv_gather_scatter` with offsets grouped into batched GEMMs by encoded plans
    (:meth:`pointsparse.grouping.GroupingPlan.encode`); the input gradient runs ``input_grad_plan``
    with roles swapped, the weight gradient ``weight_grad_plan``. ``out_pos`` int32 ``[num_out, K]``
    / ``in_pos`` int32 ``[N_in, K]``: pair index of each (output / input row, offset), -1 if none
    (:attr:`pointsparse.kmap.KernelMap.out_pos` / ``in_pos``)."""
    return _ops.conv_grouped(feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos, num_out,
                             identity_offset, list(forward_plan), list(input_grad_plan), list(weight_grad_plan))


def conv_grouped_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                             out_idx: Tensor, identity_offset: int, plan: Sequence[int]) -> Tensor:
    """:func:`conv_weight_grad` with one batched GEMM per batched group of ``plan``."""
    return _ops.conv_grouped_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, list(plan))


def conv_implicit(feats: Tensor, weight: Tensor, neighbors: Tensor, order: Tensor, tile_masks: Tensor,
                  neighbors_t: Tensor, order_t: Tensor, tile_masks_t: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                  out_idx: Tensor, tile_rows: int) -> Tensor:
    """Implicit GEMM: ``out [N_out, C_out]``, ``out[o] = sum_k feats[neighbors[o, k]] @ weight[k]``, in
    tiles of ``tile_rows`` rows of each split's ``order`` running the offsets of ``tile_masks``
    (:class:`pointsparse.implicit.Reordering`); ``*_t``: the same for the transposed table (input
    gradient); the CSR pairs serve the weight gradient."""
    return _ops.conv_implicit(feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t,
                              offset_ptr, in_idx, out_idx, tile_rows)


def conv_implicit_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                              out_idx: Tensor) -> Tensor:
    """``[K, C_in, C_out]`` weight gradient of :func:`conv_implicit` from the map's pairs."""
    return _ops.conv_implicit_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx)


def _forward_fake(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset):
    return feats.new_empty((num_out, weight.shape[2]))


def _weight_grad_fake(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset):
    return feats.new_empty((offset_ptr.shape[0] - 1, feats.shape[1], grad_out.shape[1]))


def _setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    feats, weight, offset_ptr, in_idx, out_idx, _num_out, identity_offset = inputs
    ctx.save_for_backward(feats, weight, offset_ptr, in_idx, out_idx)
    ctx.identity_offset = identity_offset


def _make_backward(forward, weight_grad):
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


def _affine_fake(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset, scale, shift, relu,
                 residual=None):
    return feats.new_empty((num_out, weight.shape[2]))


def _affine_setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    feats, weight, offset_ptr, in_idx, out_idx, _num_out, identity_offset, scale, shift, relu, residual = inputs
    # The output's sign is the ReLU's mask (output > 0 exactly where the pre-activation is).
    ctx.save_for_backward(feats, weight, offset_ptr, in_idx, out_idx, scale, output if relu else None)
    ctx.identity_offset, ctx.relu, ctx.has_residual = identity_offset, relu, residual is not None


def _affine_backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
    feats, weight, offset_ptr, in_idx, out_idx, scale, output = ctx.saved_tensors
    g = (grad * (output > 0) if ctx.relu else grad).contiguous()              # [N_out, C_out]
    grad_conv = (g * scale).contiguous()
    grad_feats = grad_weight = grad_scale = None
    if ctx.needs_input_grad[0]:
        grad_feats = conv_fused(grad_conv, weight.transpose(1, 2), offset_ptr, out_idx, in_idx, feats.shape[0],
                                ctx.identity_offset)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_fused_weight_grad(feats, grad_conv, offset_ptr, in_idx, out_idx, ctx.identity_offset)
    if ctx.needs_input_grad[7]:
        conv = conv_fused(feats, weight, offset_ptr, in_idx, out_idx, g.shape[0], ctx.identity_offset)
        grad_scale = (g * conv).sum(0)
    grad_shift = g.sum(0) if ctx.needs_input_grad[8] else None
    grad_residual = g if ctx.has_residual and ctx.needs_input_grad[10] else None
    return grad_feats, grad_weight, None, None, None, None, None, grad_scale, grad_shift, None, grad_residual


def _grouped_fake(feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos, num_out, identity_offset,
                  forward_plan, input_grad_plan, weight_grad_plan):
    return feats.new_empty((num_out, weight.shape[2]))


def _grouped_weight_grad_fake(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, plan):
    return feats.new_empty((offset_ptr.shape[0] - 1, feats.shape[1], grad_out.shape[1]))


def _grouped_setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos, _num_out, identity_offset, *plans = inputs
    ctx.save_for_backward(feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos)
    ctx.identity_offset = identity_offset
    ctx.plans = plans  # forward, input_grad, weight_grad


def _grouped_backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
    feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos = ctx.saved_tensors
    forward_plan, input_grad_plan, weight_grad_plan = ctx.plans
    grad = grad.contiguous()
    grad_feats = grad_weight = None
    if ctx.needs_input_grad[0]:
        # Roles swapped: gather grad rows by out_idx, scatter into input rows through in_pos.
        grad_feats = conv_grouped(grad, weight.transpose(1, 2), offset_ptr, out_idx, in_idx, in_pos, out_pos,
                                  feats.shape[0], ctx.identity_offset, input_grad_plan, forward_plan,
                                  weight_grad_plan)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_grouped_weight_grad(feats, grad, offset_ptr, in_idx, out_idx, ctx.identity_offset,
                                               weight_grad_plan)
    return (grad_feats, grad_weight) + (None,) * 10


def _implicit_fake(feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t, offset_ptr,
                   in_idx, out_idx, tile_rows):
    return feats.new_empty((neighbors.shape[0], weight.shape[2]))


def _implicit_weight_grad_fake(feats, grad_out, offset_ptr, in_idx, out_idx):
    return feats.new_empty((offset_ptr.shape[0] - 1, feats.shape[1], grad_out.shape[1]))


def _implicit_setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    *tensors, tile_rows = inputs
    ctx.save_for_backward(*tensors)
    ctx.tile_rows = tile_rows


def _implicit_backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
    (feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t, offset_ptr, in_idx,
     out_idx) = ctx.saved_tensors
    grad = grad.contiguous()
    grad_feats = grad_weight = None
    if ctx.needs_input_grad[0]:
        # The transposed table: input row i sums grad[o] @ weight[k]^T over its outputs o.
        grad_feats = conv_implicit(grad, weight.transpose(1, 2), neighbors_t, order_t, tile_masks_t, neighbors,
                                   order, tile_masks, offset_ptr, out_idx, in_idx, ctx.tile_rows)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_implicit_weight_grad(feats, grad, offset_ptr, in_idx, out_idx)
    return (grad_feats, grad_weight) + (None,) * 10


torch.library.register_fake("pointsparse::conv_implicit")(_implicit_fake)
torch.library.register_fake("pointsparse::conv_implicit_weight_grad")(_implicit_weight_grad_fake)
torch.library.register_autograd("pointsparse::conv_implicit", _implicit_backward,
                                setup_context=_implicit_setup_context)
register_autocast("pointsparse::conv_implicit", _lib)
register_autocast("pointsparse::conv_implicit_weight_grad", _lib)

torch.library.register_fake("pointsparse::conv_fused_affine_relu")(_affine_fake)
torch.library.register_autograd("pointsparse::conv_fused_affine_relu", _affine_backward,
                                setup_context=_affine_setup_context)

torch.library.register_fake("pointsparse::conv_grouped")(_grouped_fake)
torch.library.register_fake("pointsparse::conv_grouped_weight_grad")(_grouped_weight_grad_fake)
torch.library.register_autograd("pointsparse::conv_grouped", _grouped_backward, setup_context=_grouped_setup_context)
register_autocast("pointsparse::conv_grouped", _lib)
register_autocast("pointsparse::conv_grouped_weight_grad", _lib)

for _forward, _weight_grad in ((conv_gather_scatter, conv_weight_grad), (conv_fused, conv_fused_weight_grad)):
    torch.library.register_fake(f"pointsparse::{_forward.__name__}")(_forward_fake)
    torch.library.register_fake(f"pointsparse::{_weight_grad.__name__}")(_weight_grad_fake)
    torch.library.register_autograd(f"pointsparse::{_forward.__name__}", _make_backward(_forward, _weight_grad),
                                    setup_context=_setup_context)
    register_autocast(f"pointsparse::{_forward.__name__}", _lib)
    register_autocast(f"pointsparse::{_weight_grad.__name__}", _lib)
