"""``torchsparse.backend``: the parts of TorchSparse's compiled module that model code calls
directly, on pointsparse's lookups (every device): ``GPUHashTable`` (SPVNAS 2.1's point-voxel
queries) and the hash functions. Values are row + 1, 0 where absent, as TorchSparse returns them."""

import torch
from torch import Tensor

from ... import point_voxel as pv
from .nn import functional as F


class GPUHashTable:
    """A table of coordinates (``insert_coords``, rows given as (x, y, z, batch)) or of int64 keys
    (``insert_vals``). ``keys`` / ``vals`` buffers are accepted for TorchSparse's signature."""

    def __init__(self, keys: Tensor = None, vals: Tensor = None):
        self._coords = None   # int32 [N, 4] (batch, x, y, z)
        self._keys = None     # int64 [N]

    def insert_coords(self, coords: Tensor) -> None:
        self._coords = coords[:, [3, 0, 1, 2]].int().contiguous()

    def insert_vals(self, keys: Tensor) -> None:
        self._keys = keys.reshape(-1)

    def lookup_vals(self, keys: Tensor) -> Tensor:
        return (F.sphashquery(keys, self._keys) + 1).int()

    def lookup_coords(self, coords: Tensor, kernel_sizes: Tensor, strides: Tensor, kernel_volume: int) -> Tensor:
        """int32 ``[M, K]``: row + 1 of ``coords * stride + offset`` for each offset (per axis
        ``m - (k - 1) // 2``; odd volumes x fastest, even volumes z fastest), 0 where absent."""
        size, step = [int(v) for v in kernel_sizes.tolist()], [int(v) for v in strides.tolist()]
        axes = [[m - (k - 1) // 2 for m in range(k)] for k in size]
        if kernel_volume % 2:
            rows = [(x, y, z) for z in axes[2] for y in axes[1] for x in axes[0]]
        else:
            rows = [(x, y, z) for x in axes[0] for y in axes[1] for z in axes[2]]
        queries = coords[:, [3, 0, 1, 2]].int()
        queries[:, 1:] *= torch.tensor(step, dtype=torch.int32, device=queries.device)
        offsets = torch.tensor(rows, dtype=torch.int32)
        return (pv.hash_query(queries.contiguous(), self._coords, offsets) + 1).int()


def hash_cpu(coords: Tensor) -> Tensor:
    return F.sphash(coords)


def kernel_hash_cpu(coords: Tensor, offsets: Tensor) -> Tensor:
    return F.sphash(coords, offsets)


hash_cuda, kernel_hash_cuda = hash_cpu, kernel_hash_cpu
