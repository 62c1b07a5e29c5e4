"""Implicit-GEMM ops (:mod:`pointsparse.dataflows.implicit`): output-stationary tiles over the
neighbour table; their fake kernels and autograd (conventions: :mod:`.conv`)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .autocast import register_autocast
from .autograd_kernel import register_autograd
from .conv import OPS


def conv_implicit(feats: Tensor, weight: Tensor, neighbors: Tensor, order: Tensor, tile_masks: Tensor,
                  neighbors_t: Tensor, order_t: Tensor, tile_masks_t: Tensor, offset_ptr: Tensor, in_idx: Tensor,
                  out_idx: Tensor, tile_rows: int, symmetric: bool = False) -> Tensor:
    """Implicit GEMM: ``out [N_out, C_out]``, ``out[o] = sum_k feats[neighbors[o, k]] @ weight[k]``, in
    tiles of ``tile_rows`` rows of each split's ``order`` running the offsets of ``tile_masks``
    (:class:`pointsparse.implicit.Reordering`); ``*_t``: the same for the transposed table (input
    gradient); the CSR pairs serve the weight gradient. ``symmetric``: the table is its own transpose
    with the offsets reversed (a submanifold map of a centred odd kernel), passed again as ``*_t``: the
    input gradient reads it with the weight's offsets reversed, and no transposed table is made."""
    return OPS.conv_implicit(feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t,
                              offset_ptr, in_idx, out_idx, tile_rows, symmetric)


def conv_implicit_affine_relu(feats: Tensor, weight: Tensor, neighbors: Tensor, order: Tensor, tile_masks: Tensor,
                              tile_rows: int, scale: Tensor, shift: Tensor, relu: bool,
                              residual: Optional[Tensor] = None) -> Tensor:
    """``relu?(conv_implicit(...) * scale + shift [+ residual])``: an implicit GEMM ending in an eval-mode
    batch norm (``scale``, ``shift`` ``[C_out]``), a residual ``[N_out, C_out]`` and a ReLU, applied on
    CUDA to the float sums in the kernel's store (no pass of its own, one rounding). Inference only:
    not differentiable."""
    return OPS.conv_implicit_affine_relu(feats, weight, neighbors, order, tile_masks, tile_rows, scale, shift, relu,
                                         residual)


def conv_implicit_weight_grad(feats: Tensor, grad_out: Tensor, neighbors: Tensor, order: Tensor, tile_masks: Tensor,
                              tile_rows: int, offset_ptr: Tensor, in_idx: Tensor, out_idx: Tensor) -> Tensor:
    """``[K, C_in, C_out]`` weight gradient of :func:`conv_implicit`, deterministic: on CUDA from the
    neighbour table in the forward's ``order`` and tiles (split-K, partial sums added in a fixed
    order), on the CPU from the map's pairs."""
    return OPS.conv_implicit_weight_grad(feats, grad_out, neighbors, order, tile_masks, tile_rows, offset_ptr,
                                         in_idx, out_idx)


def _implicit_fake(feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t, offset_ptr,
                   in_idx, out_idx, tile_rows, symmetric=False):
    return feats.new_empty((neighbors.shape[0], weight.shape[2]))


def _implicit_affine_fake(feats, weight, neighbors, order, tile_masks, tile_rows, scale, shift, relu, residual=None):
    return feats.new_empty((neighbors.shape[0], weight.shape[2]))


def _implicit_weight_grad_fake(feats, grad_out, neighbors, order, tile_masks, tile_rows, offset_ptr, in_idx,
                               out_idx):
    return feats.new_empty((neighbors.shape[1], feats.shape[1], grad_out.shape[1]))


def _implicit_setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    *tensors, tile_rows, symmetric = inputs
    ctx.save_for_backward(*tensors)
    ctx.tile_rows, ctx.symmetric = tile_rows, symmetric


def _implicit_backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
    (feats, weight, neighbors, order, tile_masks, neighbors_t, order_t, tile_masks_t, offset_ptr, in_idx,
     out_idx) = ctx.saved_tensors
    grad = grad.contiguous()
    grad_feats = grad_weight = None
    if ctx.needs_input_grad[0]:
        # Input row i sums grad[o] @ weight[k]^T over its outputs o: the transposed table, whose pairs
        # are the map's swapped. A symmetric table (passed as its own *_t) is its own transpose with the
        # offsets reversed, input i's output at offset k being neighbors[i, K-1-k]: it is read with the
        # weight's offsets reversed (one copy), and its pairs are the map's own as seen from it.
        weight_t = (weight.flip(0) if ctx.symmetric else weight).transpose(1, 2)
        rows = (in_idx, out_idx) if ctx.symmetric else (out_idx, in_idx)
        grad_feats = conv_implicit(grad, weight_t, neighbors_t, order_t, tile_masks_t, neighbors, order, tile_masks,
                                   offset_ptr, *rows, ctx.tile_rows, ctx.symmetric)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_implicit_weight_grad(feats, grad, neighbors, order, tile_masks, ctx.tile_rows, offset_ptr,
                                                in_idx, out_idx)
    return (grad_feats, grad_weight) + (None,) * 11


torch.library.register_fake("pointsparse::conv_implicit")(_implicit_fake)
torch.library.register_fake("pointsparse::conv_implicit_weight_grad")(_implicit_weight_grad_fake)
torch.library.register_fake("pointsparse::conv_implicit_affine_relu")(_implicit_affine_fake)
register_autograd("pointsparse::conv_implicit", _implicit_backward, setup_context=_implicit_setup_context)
register_autocast("pointsparse::conv_implicit")
register_autocast("pointsparse::conv_implicit_weight_grad")
register_autocast("pointsparse::conv_implicit_affine_relu")

