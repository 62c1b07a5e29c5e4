"""``torchsparse.nn.utils``: ``fapply`` and ``get_kernel_offsets``."""

from typing import Callable

import torch
from torch import Tensor

from ..tensor import SparseTensor, make_ntuple


def fapply(input: SparseTensor, fn: Callable[..., Tensor], *args, **kwargs) -> SparseTensor:
    """``fn`` on the features; coordinates, stride, range and cache kept."""
    return input.derive(fn(input.feats, *args, **kwargs))


def get_kernel_offsets(size, stride=1, dilation=1, device="cpu") -> Tensor:
    """TorchSparse's offsets int32 ``[K, 3]``: per axis ``-k // 2 + 1 .. k // 2`` times stride and
    dilation; odd volumes x fastest (as pointsparse and MinkowskiEngine), even volumes z fastest."""
    size, stride, dilation = make_ntuple(size, 3), make_ntuple(stride, 3), make_ntuple(dilation, 3)
    axes = [[m * stride[a] * dilation[a] for m in range(-size[a] // 2 + 1, size[a] // 2 + 1)] for a in range(3)]
    if (size[0] * size[1] * size[2]) % 2 == 1:
        rows = [(x, y, z) for z in axes[2] for y in axes[1] for x in axes[0]]
    else:
        rows = [(x, y, z) for x in axes[0] for y in axes[1] for z in axes[2]]
    return torch.tensor(rows, dtype=torch.int32, device=device)
