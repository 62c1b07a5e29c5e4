"""Modules that act on features only: normalisation, activations and global pooling.

Each subclasses the dense torch module it applies to ``feats [N, C]``, so its parameters and
buffers carry the dense module's names (``bn.weight``, not ``bn.module.weight``), as in
TorchSparse and spconv, and their checkpoints load without renaming.
"""

from torch import Tensor, nn

from .. import functional as F
from ..tensor import SparseTensor


class _OnFeats:
    """Mixin: the dense module's forward applied to ``feats``, coordinates, stride and cache kept."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(super().forward(x.feats))


class BatchNorm(_OnFeats, nn.BatchNorm1d):
    """Batch normalisation over all voxels of the batch (``torch.nn.BatchNorm1d`` on feats)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before this class subclassed BatchNorm1d nest it under "module.".
        for key in [k for k in state_dict if k.startswith(prefix + "module.")]:
            state_dict[prefix + key[len(prefix + "module."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
