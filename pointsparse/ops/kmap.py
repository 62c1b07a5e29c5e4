"""Typed wrappers over the kernel-map ops ``torch.ops.pointsparse.*`` and their fake kernels.

Coordinates are int32 ``[N, 4]`` rows ``(batch, x, y, z)``, unique, with batch in ``[0, 511]`` and
x/y/z in ``[-131072, 131071]`` (see :data:`COORD_RANGE`). Row indices are 0-based int32; ``-1``
marks an absent neighbour.

``checked=True`` (the map builders and :func:`kmap_transpose`): the caller vouches for the values
(coordinates the library made or checked before, tables it built); dtypes and shapes are still
checked, ranges, duplicates and symmetry are not, so that a CUDA build reads nothing back to the host.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

BATCH_RANGE = (0, 511)
COORD_RANGE = (-131072, 131071)

_ops = torch.ops.pointsparse


def pack_coords(coords: Tensor) -> Tensor:
    """Packs coords int32 ``[N, 4]`` into int64 keys ``[N]`` ordered like ``(b, x, y, z)`` tuples."""
    return _ops.pack_coords(coords)


def first_occurrence(inverse: Tensor, count: int) -> Tensor:
    """int64 ``[count]``: for each value u of a ``torch.unique`` inverse ``[N]``, the first position
    i with ``inverse[i] == u``."""
    index = torch.full((count,), inverse.shape[0], dtype=torch.int64, device=inverse.device)
    positions = torch.arange(inverse.shape[0], device=inverse.device)
    return index.scatter_reduce_(0, inverse, positions, "amin")


def unique_coords(coords: Tensor) -> Tuple[Tensor, Tensor]:
    """The distinct rows of coords int32 ``[N, 4]`` in key order (lexicographic (b, x, y, z)):
    ``index`` int64 ``[M]``, the first row holding each, and ``inverse`` int64 ``[N]``, the distinct
    row of each (``coords[index][inverse] == coords``)."""
    keys, inverse = torch.unique(pack_coords(coords.contiguous()), sorted=True, return_inverse=True)
    return first_occurrence(inverse, keys.shape[0]), inverse


def downsample_coords_hash(coords: Tensor, factor: Sequence[int], checked: bool = False) -> Tensor:
    """Unique ``floor(c / factor) * factor`` of coords int32 ``[N, 4]`` per batch, as int32 ``[M, 4]``
    in order of first occurrence; deduplicated with a hash table. ``factor``: 3 ints > 0."""
    return _ops.downsample_coords_hash(coords, list(factor), checked)


def downsample_coords_sort(coords: Tensor, factor: Sequence[int], checked: bool = False) -> Tensor:
    """Same result as :func:`downsample_coords_hash`, deduplicated by sorting packed keys."""
    return _ops.downsample_coords_sort(coords, list(factor), checked)


HashTable = Tuple[Tensor, Tensor]  # (keys int64 [capacity], values int32 [capacity]) of coords_hash_table


def coords_hash_table(coords: Tensor, checked: bool = False) -> HashTable:
    """The hash table of the rows of coords int32 ``[N, 4]`` (row i at its packed key), to hand to
    :func:`build_kmap_hash` (as ``in_coords``' table) and :func:`kmap_tiling` (as ``out_coords``') for
    every map on these coordinates instead of a table per map. Duplicates raise ``ValueError``."""
    return _ops.coords_hash_table(coords, checked)


def build_kmap_hash(in_coords: Tensor, out_coords: Tensor, offsets: Tensor, symmetric: bool,
                    checked: bool = False, table: Optional[HashTable] = None) -> Tensor:
    """Neighbour table int32 ``[N_out, K]``: the row of ``in_coords`` (int32 ``[N_in, 4]``) at
    ``out_coords[o] + offsets[k]``, or -1. ``offsets``: int32 ``[K, 3]`` in coordinate units.
    ``symmetric``: a submanifold map of an odd centred kernel (``out_coords`` is ``in_coords``),
    built from half the queries. Duplicate input coordinates raise ``ValueError``. ``table``: the
    :func:`coords_hash_table` of ``in_coords``, queried instead of building one."""
    keys, values = table or (None, None)
    return _ops.build_kmap_hash(in_coords, out_coords, offsets, symmetric, checked, keys, values)


def build_kmap_sort(in_coords: Tensor, out_coords: Tensor, offsets: Tensor, symmetric: bool,
                    checked: bool = False) -> Tensor:
    """Same table as :func:`build_kmap_hash`, found by merging sorted packed keys (CPU) or by
    binary search in them (CUDA)."""
    return _ops.build_kmap_sort(in_coords, out_coords, offsets, symmetric, checked)


def kmap_csr(neighbors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-offset pairs of a neighbour table int32 ``[N_out, K]`` as CSR: ``offset_ptr`` int64
    ``[K + 1]`` on the CPU (on CUDA the one synchronisation: the pair count sizes the outputs),
    ``in_idx`` and ``out_idx`` int32 ``[P]`` on the table's device; within an offset, ``out_idx``
    ascends."""
    return _ops.kmap_csr(neighbors)


def kmap_transpose(neighbors: Tensor, num_in: int, checked: bool = False) -> Tensor:
    """The transposed neighbour table int32 ``[num_in, K]`` of ``neighbors`` int32 ``[N_out, K]``
    (entries in ``[-1, num_in)``): output row o at ``[i, k]`` where ``neighbors[o, k] == i``, -1
    elsewhere."""
    return _ops.kmap_transpose(neighbors, num_in, checked)


def kmap_reorder(neighbors: Tensor, splits: int, tile_rows: int, reorder: bool) -> Tuple[Tensor, Tensor]:
    """Implicit-GEMM row reordering of ``neighbors`` int32 ``[N, K]``: ``order`` int32 ``[splits, N]``
    (per split of contiguous offsets, the rows stably sorted by their mask in that range, descending,
    when ``reorder``) and ``tile_masks`` int32 ``[splits, ceil(N / tile_rows), ceil(K / 32)]`` (the OR
    of the masks of each tile of ``tile_rows`` rows in that order)."""
    return _ops.kmap_reorder(neighbors, splits, tile_rows, reorder)


def kmap_bitmask(neighbors: Tensor) -> Tensor:
    """Presence bits of a neighbour table int32 ``[N_out, K]`` as int32 ``[N_out, ceil(K / 32)]``:
    bit ``k % 32`` of word ``k // 32`` is set where neighbour k exists."""
    return _ops.kmap_bitmask(neighbors)


def kmap_tiling(in_coords: Tensor, out_coords: Tensor, kernel_size: Sequence[int],
                tensor_stride: Sequence[int], checked: bool = False, table: Optional[HashTable] = None) -> Tensor:
    """Neighbour table int32 ``[N_out, K]`` of a kernel that tiles its stride: sizes even or 1
    (offsets ``0 .. k-1`` times ``tensor_stride``), conv stride equal to the kernel size, no
    dilation. ``out_coords`` must be the cell corners (multiples of ``kernel_size *
    tensor_stride``); each input finds its output by one hash lookup of its corner. Equal to
    ``build_kmap_*`` with the same offsets; duplicates or off-corner outputs raise ``ValueError``.
    ``table``: the :func:`coords_hash_table` of ``out_coords``."""
    keys, values = table or (None, None)
    return _ops.kmap_tiling(in_coords, out_coords, list(kernel_size), list(tensor_stride), checked, keys, values)


def downsample_tiling(coords: Tensor, kernel_size: Sequence[int],
                      tensor_stride: Sequence[int], checked: bool = False) -> Tuple[Tensor, Tensor]:
    """``(out_coords, neighbors)`` of a tiling kernel in one pass: the output coordinates that
    downsampling by ``kernel_size * tensor_stride`` gives (same order) and :func:`kmap_tiling`'s
    table. Each input's corner is hashed once and its output found from the slot it claimed."""
    return _ops.downsample_tiling(coords, list(kernel_size), list(tensor_stride), checked)


@torch.library.register_fake("pointsparse::pack_coords")
def _pack_coords_fake(coords: Tensor) -> Tensor:
    return coords.new_empty((coords.shape[0],), dtype=torch.int64)


def _downsample_fake(coords: Tensor, factor: Sequence[int], checked: bool = False) -> Tensor:
    num_out = torch.library.get_ctx().new_dynamic_size()
    return coords.new_empty((num_out, 4))


torch.library.register_fake("pointsparse::downsample_coords_hash", _downsample_fake)
torch.library.register_fake("pointsparse::downsample_coords_sort", _downsample_fake)


def _build_kmap_fake(in_coords: Tensor, out_coords: Tensor, offsets: Tensor, symmetric: bool,
                     checked: bool = False, table_keys: Optional[Tensor] = None,
                     table_values: Optional[Tensor] = None) -> Tensor:
    return out_coords.new_empty((out_coords.shape[0], offsets.shape[0]))


@torch.library.register_fake("pointsparse::coords_hash_table")
def _coords_hash_table_fake(coords: Tensor, checked: bool = False) -> HashTable:
    capacity = torch.library.get_ctx().new_dynamic_size()  # a power of two >= 4 N
    return coords.new_empty((capacity,), dtype=torch.int64), coords.new_empty((capacity,))


torch.library.register_fake("pointsparse::build_kmap_hash", _build_kmap_fake)
torch.library.register_fake("pointsparse::build_kmap_sort", _build_kmap_fake)


@torch.library.register_fake("pointsparse::kmap_tiling")
def _kmap_tiling_fake(in_coords: Tensor, out_coords: Tensor, kernel_size: Sequence[int],
                      tensor_stride: Sequence[int], checked: bool = False, table_keys: Optional[Tensor] = None,
                      table_values: Optional[Tensor] = None) -> Tensor:
    return out_coords.new_empty((out_coords.shape[0], kernel_size[0] * kernel_size[1] * kernel_size[2]))


@torch.library.register_fake("pointsparse::downsample_tiling")
def _downsample_tiling_fake(coords: Tensor, kernel_size: Sequence[int],
                            tensor_stride: Sequence[int], checked: bool = False) -> Tuple[Tensor, Tensor]:
    num_out = torch.library.get_ctx().new_dynamic_size()
    volume = kernel_size[0] * kernel_size[1] * kernel_size[2]
    return coords.new_empty((num_out, 4)), coords.new_empty((num_out, volume))


@torch.library.register_fake("pointsparse::kmap_csr")
def _kmap_csr_fake(neighbors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    num_pairs = torch.library.get_ctx().new_dynamic_size()
    offset_ptr = torch.empty((neighbors.shape[1] + 1,), dtype=torch.int64)  # on the CPU, on every device
    return offset_ptr, neighbors.new_empty((num_pairs,)), neighbors.new_empty((num_pairs,))


@torch.library.register_fake("pointsparse::kmap_transpose")
def _kmap_transpose_fake(neighbors: Tensor, num_in: int, checked: bool = False) -> Tensor:
    return neighbors.new_empty((num_in, neighbors.shape[1]))


@torch.library.register_fake("pointsparse::kmap_reorder")
def _kmap_reorder_fake(neighbors: Tensor, splits: int, tile_rows: int, reorder: bool) -> Tuple[Tensor, Tensor]:
    n, num_offsets = neighbors.shape
    tiles = (n + tile_rows - 1) // tile_rows
    return neighbors.new_empty((splits, n)), neighbors.new_empty((splits, tiles, (num_offsets + 31) // 32))


@torch.library.register_fake("pointsparse::kmap_bitmask")
def _kmap_bitmask_fake(neighbors: Tensor) -> Tensor:
    return neighbors.new_empty((neighbors.shape[0], (neighbors.shape[1] + 31) // 32))
