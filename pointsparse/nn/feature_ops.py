"""Modules that act on features only: normalisation, activations and global pooling."""

from torch import Tensor, nn

from .. import functional as F
from ..tensor import SparseTensor


class _OnFeats(nn.Module):
    """Applies a dense module to ``feats [N, C]``, keeping coordinates, stride and cache."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(self.module(x.feats))


class BatchNorm(_OnFeats):
    """Batch normalisation over all voxels of the batch (``torch.nn.BatchNorm1d`` on feats)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(nn.BatchNorm1d(num_features, eps=eps, momentum=momentum))


class ReLU(_OnFeats):
    def __init__(self, inplace: bool = False):
        super().__init__(nn.ReLU(inplace=inplace))


class LeakyReLU(_OnFeats):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__(nn.LeakyReLU(negative_slope, inplace=inplace))


class GlobalAvgPool(nn.Module):
    """``[B, C]``: mean of the features of each batch item."""

    def forward(self, x: SparseTensor) -> Tensor:
        return F.global_pool(x, "mean")


class GlobalMaxPool(nn.Module):
    """``[B, C]``: channel-wise max over the features of each batch item."""

    def forward(self, x: SparseTensor) -> Tensor:
        return F.global_pool(x, "amax")
