"""Implicit GEMM with bitmask output reordering: the config, the row reordering and its accounting.

An output-stationary implicit GEMM walks tiles of ``tile_rows`` output rows over ``neighbors
[N_out, K]``; a tile runs every offset that any of its rows needs (the OR of their neighbour masks),
and rows without that neighbour multiply a zero row: redundant MACs. Sorting the rows by their
mask puts rows that need the same offsets into the same tile; splitting the offsets into
``splits`` contiguous ranges, each with its own mask, sort and partial sum, cuts more (TorchSparse++
``split_mask_num``, spconv's MaskSplit).

Split s covers offsets ``[s * K // S, (s + 1) * K // S)``. Its masks are the rows' neighbour bits
in that range; with ``reorder`` its rows are sorted by mask, descending (a stable sort, so equal masks
keep their order, and the order is the same on every device). The ``kmap_reorder`` op computes both.
"""

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from . import ops
from .work import RowWork


@dataclass(frozen=True)
class ImplicitGemmConfig:
    tile_rows: int = 32  # output rows per tile: the granularity at which offsets are skipped
    reorder: bool = True  # sort output rows by neighbour mask
    splits: int = 1       # contiguous offset ranges, each sorted and summed on its own

    def __post_init__(self) -> None:
        if not isinstance(self.tile_rows, int) or self.tile_rows < 1:
            raise ValueError(f"tile_rows must be a positive int, got {self.tile_rows!r}")
        if not isinstance(self.splits, int) or self.splits < 1:
            raise ValueError(f"splits must be a positive int, got {self.splits!r}")


@dataclass(frozen=True)
class Reordering:
    """Per split: the order in which tiles take the output rows, and each tile's offsets."""

    order: Tensor       # int32 [S, N_out]: a permutation of the output rows per split
    tile_masks: Tensor  # int32 [S, ceil(N_out / tile_rows), ceil(K / 32)]: offsets (bits) each tile runs
    tile_rows: int


def split_ranges(num_offsets: int, splits: int) -> Tuple[Tuple[int, int], ...]:
    """``[begin, end)`` offsets of each split; ValueError for more splits than offsets."""
    if splits > max(num_offsets, 1):
        raise ValueError(f"{splits} splits of {num_offsets} offsets: at most one split per offset")
    return tuple((s * num_offsets // splits, (s + 1) * num_offsets // splits) for s in range(splits))


def reorder_rows(neighbors: Tensor, config: ImplicitGemmConfig) -> Reordering:
    """The :class:`Reordering` of ``neighbors`` int32 ``[N_out, K]`` (on its device) for ``config``
    (the ``kmap_reorder`` op)."""
    split_ranges(neighbors.shape[1], config.splits)  # the error for too many splits
    order, tile_masks = ops.kmap_reorder(neighbors, config.splits, config.tile_rows, config.reorder)
    return Reordering(order, tile_masks, config.tile_rows)


@dataclass(frozen=True)
class ImplicitGemmWork(RowWork):
    """Rows of ``C_in x C_out`` MACs: those with a neighbour (useful) and those a tile computes."""

    useful_rows: int
    computed_rows: int


def implicit_gemm_work(neighbors: Tensor, config: ImplicitGemmConfig) -> ImplicitGemmWork:
    """Exact accounting of ``config`` on ``neighbors``: every tile computes its rows times the
    offsets in its mask, summed over tiles and splits (pure index arithmetic, on the CPU)."""
    neighbors = neighbors.cpu()
    reordering = reorder_rows(neighbors, config)
    n = neighbors.shape[0]
    tiles = reordering.tile_masks.shape[1]
    rows_per_tile = torch.full((tiles,), config.tile_rows, dtype=torch.int64)
    if tiles:
        rows_per_tile[-1] = n - (tiles - 1) * config.tile_rows
    masks = reordering.tile_masks.to(torch.int64) & 0xFFFFFFFF                       # [S, T, W]
    offsets_per_tile = ((masks[..., None] >> torch.arange(32)) & 1).sum((-1, -2))    # [S, T]
    computed = int((offsets_per_tile * rows_per_tile).sum())
    return ImplicitGemmWork(int((neighbors >= 0).sum()), computed)
