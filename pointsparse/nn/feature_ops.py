"""Modules that act on features only: normalisation, activations, a linear layer and global pooling.

Each subclasses the dense torch module it applies to ``feats [N, C]``, so its parameters and
buffers carry the dense module's names (``bn.weight``, not ``bn.module.weight``), as in
TorchSparse and spconv, and their checkpoints load without renaming.
"""

from typing import Optional, Tuple

from torch import Tensor, nn
from torch.autograd.profiler import record_function

from .. import functional as F
from ..ops.conv_fused import linear_fused
from ..ops.norm import batch_norm_relu, eval_affine, fused_on
from ..tensor import SparseTensor, check_same_coords

LINEAR_RANGE = "pointsparse::linear"  # the profiler range around Linear's fused path


class _OnFeats:
    """Mixin: the dense module's forward applied to ``feats``, coordinates, stride and cache kept."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(super().forward(x.feats))


class BatchNorm(nn.BatchNorm1d):
    """Batch normalisation over all voxels of the batch (``torch.nn.BatchNorm1d`` on feats), with a
    fused ReLU when ``relu``. On the CPU (float32 / float64) it runs pointsparse's fused kernels
    (:func:`pointsparse.ops.norm.batch_norm_relu`: two passes over the features each way instead of
    about seven for batch norm then ReLU); elsewhere torch's."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, relu: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.relu = relu

    def _statistics(self) -> Tuple[Optional[Tensor], Optional[Tensor], float]:
        """(running mean, running variance, momentum factor) as the functional batch norm takes them,
        after counting this batch in training as torch's module does."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch's
                factor = 1.0 / float(self.num_batches_tracked)
        track = not self.training or self.track_running_stats
        return (self.running_mean if track else None), (self.running_var if track else None), factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        mean, var, factor = self._statistics()
        return x.with_feats(batch_norm_relu(x.feats, mean, var, self.weight, self.bias, self.training, factor,
                                            self.eps, self.relu))

    def add_relu(self, x: SparseTensor, residual: SparseTensor) -> SparseTensor:
        """``relu(norm(x) + residual)``, a residual block's end (this norm's own ``relu`` off): one pass
        over the features in eval mode on the CPU."""
        if self.relu:
            raise ValueError("add_relu adds the residual before the ReLU: the norm's own relu must be off")
        check_same_coords([x, residual], "+")
        mean, var, factor = self._statistics()
        return x.with_feats(batch_norm_relu(x.feats, mean, var, self.weight, self.bias, self.training, factor,
                                            self.eps, True, residual.feats))

    def epilogue(self, residual: Optional[SparseTensor] = None) -> Optional[F.Epilogue]:
        """In eval mode with running statistics and an affine: this norm (its ReLU; with ``residual``,
        :meth:`add_relu`'s addition and ReLU) as a conv's :class:`~pointsparse.functional.Epilogue`;
        None otherwise (training, or batch statistics in eval)."""
        if self.training or self.running_mean is None or self.weight is None or self.bias is None:
            return None
        if residual is not None and self.relu:
            raise ValueError("add_relu adds the residual before the ReLU: the norm's own relu must be off")
        scale, shift = eval_affine(self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        return F.Epilogue(scale, shift, self.relu or residual is not None, residual)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before this class subclassed BatchNorm1d nest it under "module.".
        for key in [k for k in state_dict if k.startswith(prefix + "module.")]:
            state_dict[prefix + key[len(prefix + "module."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BatchNormReLU(BatchNorm):
    """:class:`BatchNorm` followed by a ReLU, fused (no parameters of its own: a checkpoint of
    ``BatchNorm`` then ``ReLU`` in a Sequential loads into ``BatchNormReLU`` in the norm's place)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, relu=True)


class ReLU(_OnFeats, nn.ReLU):
    pass


class LeakyReLU(_OnFeats, nn.LeakyReLU):
    pass


class GlobalAvgPool(nn.Module):
    """``[B, C]``: mean of the features of each batch item."""

    def forward(self, x: SparseTensor) -> Tensor:
        return F.global_pool(x, "mean")


class GlobalMaxPool(nn.Module):
    """``[B, C]``: channel-wise max over the features of each batch item."""

    def forward(self, x: SparseTensor) -> Tensor:
        return F.global_pool(x, "amax")


class Linear(nn.Linear):
    """``torch.nn.Linear`` (its parameters and their names) over features: a tensor ``[N, C_in]``
    (returns the tensor) or a SparseTensor (returns one, coordinates kept), e.g. a segmentation head.
    On the CPU (float32 / float64, no autocast) it runs as a 1x1 conv through the fused kernels
    (:func:`pointsparse.ops.conv_fused.linear_fused`): MinkUNet's 96 -> 19 head on 78,744 voxels took 1.2 ms
    against torch's 3.8 ms here (forward and backward 5.5 ms against 12.7 ms); elsewhere, and for
    tensors that are not ``[N, C_in]``, torch's."""

    def forward(self, input):
        if isinstance(input, SparseTensor):
            return input.with_feats(self.forward(input.feats))
        if not fused_on(input) or self.weight.dtype != input.dtype:
            return super().forward(input)
        with record_function(LINEAR_RANGE):  # bench minkunet counts it as the head
            return linear_fused(input, self.weight, self.bias)
