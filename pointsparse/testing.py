"""Slow, obviously correct references for every kernel-map op, used by the tests.

Each works on plain Python tuples and dictionaries, so that it shares no code with the kernels.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

Coord = Tuple[int, int, int, int]


def _rows(coords: Tensor) -> List[Coord]:
    return [tuple(row) for row in coords.cpu().tolist()]


def reference_downsample(coords: Tensor, factor: Sequence[int]) -> Tensor:
    """Unique ``floor(c / factor) * factor`` per batch in first-occurrence order, int32 ``[M, 4]``."""
    seen: Dict[Coord, None] = {}
    for b, x, y, z in _rows(coords):
        floored = (b, x // factor[0] * factor[0], y // factor[1] * factor[1], z // factor[2] * factor[2])
        seen.setdefault(floored, None)
    return torch.tensor(list(seen), dtype=torch.int32).reshape(-1, 4)


def reference_neighbors(in_coords: Tensor, out_coords: Tensor, offsets: Tensor) -> Tensor:
    """int32 ``[N_out, K]``: row of in_coords at ``out_coords[o] + offsets[k]`` (coordinate units), or -1."""
    row_of = {coord: i for i, coord in enumerate(_rows(in_coords))}
    table = [[row_of.get((b, x + dx, y + dy, z + dz), -1) for dx, dy, dz in offsets.tolist()]
             for b, x, y, z in _rows(out_coords)]
    return torch.tensor(table, dtype=torch.int32).reshape(out_coords.shape[0], offsets.shape[0])


def reference_csr(neighbors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-offset pairs, output rows ascending: ``offset_ptr [K+1]``, ``in_idx [P]``, ``out_idx [P]``."""
    table = neighbors.cpu().tolist()
    num_offsets = neighbors.shape[1]
    ptr, ins, outs = [0], [], []
    for k in range(num_offsets):
        for o, row in enumerate(table):
            if row[k] >= 0:
                ins.append(row[k])
                outs.append(o)
        ptr.append(len(ins))
    as_int = lambda values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    return torch.tensor(ptr, dtype=torch.int64), as_int(ins), as_int(outs)


def reference_bitmask(neighbors: Tensor) -> Tensor:
    """int32 ``[N_out, ceil(K / 32)]`` with bit ``k % 32`` of word ``k // 32`` set where present."""
    num_offsets = neighbors.shape[1]
    words = (num_offsets + 31) // 32
    out = []
    for row in neighbors.cpu().tolist():
        bits = [0] * words
        for k, i in enumerate(row):
            if i >= 0:
                bits[k // 32] |= 1 << (k % 32)
        out.append([b - (1 << 32) if b >= 1 << 31 else b for b in bits])  # as int32
    return torch.tensor(out, dtype=torch.int32).reshape(neighbors.shape[0], words)


def reference_transpose(neighbors: Tensor, num_in: int) -> Tensor:
    """int32 ``[num_in, K]``: output row o at ``[i, k]`` where ``neighbors[o, k] == i``, else -1."""
    out = [[-1] * neighbors.shape[1] for _ in range(num_in)]
    for o, row in enumerate(neighbors.cpu().tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                out[i][k] = o
    return torch.tensor(out, dtype=torch.int32).reshape(num_in, neighbors.shape[1])
