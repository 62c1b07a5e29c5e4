"""Fused CPU ops (:mod:`pointsparse.dataflows.fused`): register-blocked tiles that read, multiply and
add rows in place, alone or ending in an eval-mode batch norm; their fake kernels and autograd
(conventions: :mod:`.conv`)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .autograd_kernel import register_autograd
from .conv import OPS, register_pairs_op


def conv_fused(feats: Tensor, weight: Tensor, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor,
               num_out: int, identity_offset: int = -1) -> Tensor:
    """:func:`conv_gather_scatter` computed by fused CPU kernels (float32 / float64)."""
    return OPS.conv_fused(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset)


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
    return OPS.conv_fused_affine_relu(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset,
                                       scale, shift, relu, residual)


def conv_fused_weight_grad(feats: Tensor, grad_out: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                           out_idx: Tensor, identity_offset: int = -1) -> Tensor:
    """:func:`conv_weight_grad` computed by fused CPU kernels."""
    return OPS.conv_fused_weight_grad(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset)


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


torch.library.register_fake("pointsparse::conv_fused_affine_relu")(_affine_fake)
register_autograd("pointsparse::conv_fused_affine_relu", _affine_backward, setup_context=_affine_setup_context)

register_pairs_op(conv_fused, conv_fused_weight_grad)
