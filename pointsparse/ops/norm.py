"""Batch norm with an optional fused ReLU (and a residual block's addition before it) over features
``[N, C]``: typed wrappers of the CPU ops ``channel_moments``, ``affine_relu`` and
``batch_norm_relu_backward``, their fake kernels, and :func:`batch_norm_relu`, which runs them on the
CPU (float32 / float64) and torch's own kernels elsewhere.

On the CPU the training forward is two passes over ``[N, C]`` (statistics; normalise + ReLU) and the
backward two (reductions; input gradient), the ReLU's mask recomputed from ``x``; torch's batch norm
followed by a ReLU makes about seven. Sums run in double over fixed row blocks: the result does not
depend on the thread count. In eval mode a residual block's end is one pass instead of three.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as TF
from torch import Tensor

from .autograd_kernel import register_autograd

_ops = torch.ops.pointsparse


def channel_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance ``[C]`` of ``x [N, C]``."""
    return _ops.channel_moments(x)


def affine_relu(x: Tensor, scale: Tensor, shift: Tensor, relu: bool, residual: Optional[Tensor] = None) -> Tensor:
    """``relu?(x * scale + shift [+ residual])`` per channel, ``[N, C]``, in one pass."""
    return _ops.affine_relu(x, scale, shift, relu, residual)


@torch.library.register_fake("pointsparse::channel_moments")
def _moments_fake(x):
    return x.new_empty(x.shape[1:]), x.new_empty(x.shape[1:])


@torch.library.register_fake("pointsparse::affine_relu")
def _affine_fake(x, scale, shift, relu, residual=None):
    return torch.empty_like(x)


@torch.library.register_fake("pointsparse::batch_norm_relu_backward")
def _backward_fake(grad, x, mean, invstd, weight, bias, relu):
    return torch.empty_like(x), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _affine_setup(ctx, inputs, output) -> None:
    x, scale, shift, relu, residual = inputs
    ctx.save_for_backward(x, scale, shift, residual)  # not the output: an in-place op after it may change it
    ctx.relu = relu


def _affine_backward(ctx, grad: Tensor):
    x, scale, shift, residual = ctx.saved_tensors
    pre = x * scale + shift if residual is None else x * scale + shift + residual
    g = grad * (pre > 0) if ctx.relu else grad                      # [N, C]
    return g * scale, (g * x).sum(0), g.sum(0), None, None if residual is None else g


# Eval-mode batch norm is affine_relu with frozen statistics; gradients through it (fine-tuning
# with frozen statistics) flow to x, scale and shift.
register_autograd("pointsparse::affine_relu", _affine_backward, setup_context=_affine_setup)


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool):
        mean, var = channel_moments(x)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        y = affine_relu(x, scale, bias - mean * scale, relu)
        ctx.save_for_backward(x, mean, invstd, weight, bias)
        ctx.relu = relu
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        x, mean, invstd, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = _ops.batch_norm_relu_backward(grad.contiguous(), x, mean, invstd, weight, bias, ctx.relu)
        return dx, dweight, dbias, None, None


def eval_affine(running_mean: Tensor, running_var: Tensor, weight: Tensor, bias: Tensor,
                eps: float) -> Tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` per channel: ``(scale, shift)`` ``[C]``. Made on
    every call (four small ops: kernel launches on CUDA), not kept: a kept value would go stale where
    a parameter is written without a version bump (``p.data.mul_``, as EMA models do)."""
    scale = weight * torch.rsqrt(running_var + eps)
    return scale, torch.addcmul(bias, running_mean, scale, value=-1)  # bias - mean * scale


def fused_on(x: Tensor) -> bool:
    """Whether :func:`batch_norm_relu` runs the fused CPU kernels for ``x``."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 2
            and x.shape[0] > 0 and not torch.is_autocast_enabled("cpu"))


def fused_with(x: Tensor, *operands: Optional[Tensor]) -> bool:
    """Whether the fused CPU kernels take ``x`` with ``operands`` (None: absent), all of ``x``'s dtype
    (the affine epilogue of a conv or of :func:`affine_relu`)."""
    return fused_on(x) and all(t is None or t.dtype == x.dtype for t in operands)


def batch_norm_relu(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], weight: Tensor,
                    bias: Tensor, training: bool, momentum: float, eps: float, relu: bool,
                    residual: Optional[Tensor] = None) -> Tensor:
    """``torch.nn.functional.batch_norm`` (same arguments: batch statistics when ``training``, running
    statistics updated with ``momentum`` when given), plus ``residual [N, C]`` when given (a residual
    block's end), followed by a ReLU when ``relu``; fused on the CPU for float32 / float64 features
    ``[N, C]`` with an affine weight and bias (in eval mode the residual too: one pass), torch's
    kernels otherwise."""
    fused = fused_on(x) and weight is not None and bias is not None and (training or running_mean is not None)
    relu_before_residual = relu and residual is None
    if fused and not training:
        scale, shift = eval_affine(running_mean, running_var, weight, bias, eps)
        inline = residual is None or (residual.dtype == x.dtype and residual.shape == x.shape)
        y = affine_relu(x.contiguous(), scale.to(x.dtype), shift.to(x.dtype),
                        relu and inline, residual.contiguous() if inline and residual is not None else None)
        if inline:
            return y
    elif fused:
        y, mean, var = _BatchNormReLU.apply(x.contiguous(), weight, bias, eps, relu_before_residual)
        if running_mean is not None:
            with torch.no_grad():
                n = x.shape[0]
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * (n / max(n - 1, 1)), alpha=momentum)
    else:
        y = TF.batch_norm(x, running_mean, running_var, weight, bias, training or running_mean is None, momentum, eps)
        y = torch.relu(y) if relu_before_residual else y
    if residual is None:
        return y
    y = y + residual
    return y.relu_() if relu else y
