"""Implicit GEMM: output-stationary tiles of mask-sorted output rows over the neighbour table,
offsets skipped per tile, no atomics (:mod:`pointsparse.ops.conv_implicit`; config, reordering and
exact accounting: :mod:`pointsparse.implicit`)."""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import ops
from ..config import ConvConfig, Dataflow
from ..implicit import ImplicitGemmConfig, Reordering, implicit_gemm_work, reorder_rows
from ..kmap import KernelMap
from .spec import FLOATS, DataflowSpec, Strategy, Work, needs_input_grad

TILES = (16, 32, 64, 128)
SPLITS = (1, 2, 3, 4)
AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)  # the dtypes autocast casts from


def reordering(kmap: KernelMap, config: ImplicitGemmConfig, transposed: bool = False) -> Reordering:
    """The row order and tile masks of ``config`` for the map's table, or for its transpose
    (``transposed``: the input gradient's), made once per table (see ``KernelMap.table_memo``)."""
    return kmap.table_memo(("implicit", config), transposed, lambda table: reorder_rows(table, config))


def dense(kmap: KernelMap, identity_offset: int) -> bool:
    """Whether the conv is a 1x1x1 submanifold one over the library's identity map (its pairs made
    with it): ``feats @ weight[0]``, one dense GEMM through the gather-GEMM-scatter op's identity
    product, as TorchSparse and spconv run it. A table of one offset would only add its reordering
    (a sort per map and pass) and tiles that stream every row through the neighbour table."""
    return identity_offset == 0 and kmap.num_offsets == 1 and kmap.trusted and kmap.has_pairs


def run(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig) -> Tensor:
    if dense(kmap, identity_offset):
        return ops.conv_gather_scatter(feats, weight, *kmap.pairs, kmap.num_out, identity_offset)
    implicit = config.implicit
    forward = reordering(kmap, implicit)
    # A submanifold map of a centred odd kernel (the library's: its table is built symmetric) is its
    # own transpose with the offsets reversed: the input gradient reads its table, order and tiles.
    symmetric = identity_offset >= 0 and kmap.trusted
    if symmetric:
        table_t, backward = kmap.neighbors, forward
    elif needs_input_grad(feats):
        table_t, backward = kmap.neighbors_t, reordering(kmap, implicit, transposed=True)
    else:  # no input gradient: no transposed table (empty stand-ins the forward never reads, made once)
        table_t, backward = kmap.memo(("implicit", implicit, "no input gradient"), lambda: (
            kmap.neighbors.new_empty((0, kmap.num_offsets)),
            Reordering(forward.order[:, :0], forward.tile_masks[:, :0], implicit.tile_rows)))
    return ops.conv_implicit(feats, weight, kmap.neighbors, forward.order, forward.tile_masks, table_t,
                             backward.order, backward.tile_masks, *pairs_for(kmap, feats.device), implicit.tile_rows,
                             symmetric)


def run_epilogue(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig,
                 scale: Tensor, shift: Tensor, relu: bool, residual: Optional[Tensor]) -> Optional[Tensor]:
    """The conv and its epilogue in the CUDA kernels' store, for inference (nothing requires a
    gradient) with every operand of the features' dtype, or under autocast, which casts the features,
    weight and residual to its dtype and leaves the scale and shift (read in float32); None otherwise."""
    operands = (feats, weight, scale, shift) + (() if residual is None else (residual,))
    if feats.device.type != "cuda" or dense(kmap, identity_offset) or (
            torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
        return None
    if torch.is_autocast_enabled("cuda"):
        cast = (feats, weight) + (() if residual is None else (residual,))
        if any(t.dtype not in AUTOCAST_CASTS for t in cast) or not (scale.is_floating_point()
                                                                   and shift.is_floating_point()):
            return None  # (autocast leaves float64 as it is)
    elif any(t.dtype != feats.dtype for t in operands):
        return None
    forward = reordering(kmap, config.implicit)
    return ops.conv_implicit_affine_relu(feats, weight, kmap.neighbors, forward.order, forward.tile_masks,
                                         config.implicit.tile_rows, scale, shift, relu, residual)


def pairs_for(kmap: KernelMap, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """The pairs the op takes: the map's on the CPU (its weight gradient runs them); on CUDA, whose
    kernels read only the tables, empty stand-ins, so the map never builds pair lists there."""
    if device.type == "cpu":
        return kmap.pairs
    return kmap.memo(("implicit", "no pairs"), lambda: (torch.zeros(kmap.num_offsets + 1, dtype=torch.int64),
                                                         kmap.neighbors.new_empty(0), kmap.neighbors.new_empty(0)))


def candidates(num_offsets: int, quick: bool = False) -> List[Strategy]:
    """Unsorted and sorted tiles of 16-128 rows, sorted with 1-4 splits (at most one per offset);
    tiles of 32 and 1-2 splits when ``quick``."""
    tiles, splits = ((32,), (1, 2)) if quick else (TILES, SPLITS)
    found = []
    for tile in tiles:
        found.append(Strategy(f"implicit t{tile} unsorted", ConvConfig(
            dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(tile, False, 1)), "implicit"))
        for split in (s for s in splits if s <= num_offsets):
            found.append(Strategy(f"implicit t{tile} sorted s{split}", ConvConfig(
                dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(tile, True, split)), "implicit"))
    return found


def work(config: ConvConfig, kmap: KernelMap, identity_offset: int) -> Work:
    counted = implicit_gemm_work(kmap.neighbors, config.implicit)
    return Work(counted.useful_rows, counted.computed_rows, None)


SPEC = DataflowSpec(Dataflow.IMPLICIT_GEMM, "implicit", frozenset({"cpu", "cuda"}), FLOATS, run,
                    "output-stationary tiles of mask-sorted rows, offsets skipped per tile, no atomics",
                    candidates, work, run_epilogue)
