"""Gather-GEMM-scatter ops (:mod:`pointsparse.dataflows.ggs`): one GEMM per offset, or offsets
grouped into batched GEMMs by a plan; their fake kernels and autograd (conventions: :mod:`.conv`)."""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .autocast import register_autocast
from .autograd_kernel import register_autograd
from .conv import OPS, register_pairs_op


def conv_gather_scatter(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                        out_idx: Tensor, num_out: int, identity_offset: int = -1) -> Tensor:
    """``out [num_out, C_out] = sum_k scatter(out_idx_k, feats[in_idx_k] @ weight[k])``.

    ``feats [N_in, C_in]``, ``weight [K, C_in, C_out]`` of one floating dtype. Differentiable in
    ``feats`` and ``weight``.
    """
    return OPS.conv_gather_scatter(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset)


def conv_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                     out_idx: Tensor, identity_offset: int = -1) -> Tensor:
    """``grad_weight [K, C_in, C_out]``, ``grad_weight[k] = feats[in_idx_k]^T @ grad_out[out_idx_k]``."""
    return OPS.conv_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset)


def conv_grouped(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor,
                 out_pos: Tensor, in_pos: Tensor, num_out: int, identity_offset: int,
                 forward_plan: Sequence[int], input_grad_plan: Sequence[int],
                 weight_grad_plan: Sequence[int]) -> Tensor:
    """:func:`conv_gather_scatter` with offsets grouped into batched GEMMs by encoded plans
    (:meth:`pointsparse.grouping.GroupingPlan.encode`); the input gradient runs ``input_grad_plan``
    with roles swapped, the weight gradient ``weight_grad_plan``. ``out_pos`` int32 ``[num_out, K]``
    / ``in_pos`` int32 ``[N_in, K]``: pair index of each (output / input row, offset), -1 if none
    (:attr:`pointsparse.kmap.KernelMap.out_pos` / ``in_pos``)."""
    return OPS.conv_grouped(feats, weight, offset_ptr, in_idx, out_idx, out_pos, in_pos, num_out,
                             identity_offset, list(forward_plan), list(input_grad_plan), list(weight_grad_plan))


def conv_grouped_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                             out_idx: Tensor, identity_offset: int, plan: Sequence[int]) -> Tensor:
    """:func:`conv_weight_grad` with one batched GEMM per batched group of ``plan``."""
    return OPS.conv_grouped_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, list(plan))


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


torch.library.register_fake("pointsparse::conv_grouped")(_grouped_fake)
torch.library.register_fake("pointsparse::conv_grouped_weight_grad")(_grouped_weight_grad_fake)
register_autograd("pointsparse::conv_grouped", _grouped_backward, setup_context=_grouped_setup_context)
register_autocast("pointsparse::conv_grouped")
register_autocast("pointsparse::conv_grouped_weight_grad")

register_pairs_op(conv_gather_scatter, conv_weight_grad)
