"""Kernel maps: which input row feeds which output row through which kernel offset.

A :class:`KernelMap` holds one map in every layout the dataflows use. Maps are built once per
(tensor stride, kernel size, stride, dilation, transposed) and cached in the
:class:`KernelMapCache` owned by a sparse tensor and shared with the tensors derived from it.

Output coordinates, by :class:`~pointsparse.config.OutputRule` (MinkowskiEngine semantics are the
default, ``OCCUPIED``):
  * stride 1 (submanifold): the input coordinates;
  * stride s on a tensor of stride t: unique ``floor(c / (t*s)) * (t*s)`` per batch, in order of first
    occurrence, at tensor stride ``t*s``;
  * ``REACHED`` (spconv), stride s >= 1: every multiple o of ``t*s`` with an input at ``o + d_k * t``
    for some k, sorted by (batch, x, y, z); offsets may carry a padding, and with a spatial range
    outputs outside the conv arithmetic's output range are dropped;
  * transposed, stride s on a tensor of stride ``t*s``: the coordinates of the finer tensor at stride
    t, with the strided map from t (of the same rule) reused with input and output swapped;
  * transposed and generative: every fine cell ``o + d_k * t`` an input o reaches, sorted.
Output row o takes input row i through offset k when ``coords_in[i] = coords_out[o] + d_k * t``,
``d_k`` being row k of :func:`~pointsparse.offsets.kernel_offsets` (dilation and padding included);
for transposed maps input and output swap roles in that relation.
"""

import functools
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Dict, Hashable, Optional, Set, Tuple, TypeVar

import torch
from torch import Tensor

from . import ops
from .config import ConvConfig, KernelMapAlgo, OutputRule, default_kmap_algo
from .offsets import IntOrTriple, as_triple, default_padding, kernel_offsets

Triple = Tuple[int, int, int]
T = TypeVar("T")
KERNEL_MAP_RANGE = "pointsparse::kernel_map"  # the profiler range around every map build


PAIRS = "pairs"  # the memo key of a map's per-offset pairs
TABLES = "tables"  # the memo key of (what is built from the tables, shared with an inverse; side)


@dataclass(frozen=True, init=False, eq=False)
class KernelMap:
    """One kernel map in all layouts. Indices are 0-based int32 rows; -1 marks absence.

    The neighbour table is the map; the per-offset pairs (CSR: ``offset_ptr``, ``in_idx``,
    ``out_idx``) are derived from it on first use, by the dataflows that run them (gather-GEMM-scatter,
    fused, the CPU's weight gradients), so a map the implicit GEMM runs on CUDA never builds them.
    Pairs may also be handed in (all three, or None).

    Construction checks shapes, dtypes, devices and, for pairs handed in, the range of every index
    once (one synchronisation on CUDA), so that the conv ops need not read ranges back on every
    call; a malformed map raises ``ValueError`` / ``TypeError`` here. Maps the library builds itself
    skip the range read-back (``check_ranges=False``): their indices come from its own ops.
    """

    neighbors: Tensor   # int32 [N_out, K]: input row of output o at offset k, -1 if none
    out_coords: Tensor  # int32 [N_out, 4]
    out_stride: Triple  # tensor stride of the output
    num_in: int         # rows of the input the map reads (neighbors < num_in)
    # Spatial range of the output, cells per axis at out_stride, when the input had one.
    out_range: Optional[Triple] = None
    # What the dataflows derive from this map once (pairs, plans, reorderings): see memo.
    _memo: Dict[Hashable, Any] = field(default_factory=dict, repr=False)
    # Built by the library (check_ranges=False): tables derived from it need no range pass either.
    trusted: bool = field(default=False, repr=False)

    def __init__(self, neighbors: Tensor, offset_ptr: Optional[Tensor], in_idx: Optional[Tensor],
                 out_idx: Optional[Tensor], out_coords: Tensor, out_stride: Triple, num_in: int,
                 out_range: Optional[Triple] = None, *, check_ranges: bool = True) -> None:
        for name, value in (("neighbors", neighbors), ("out_coords", out_coords), ("out_stride", out_stride),
                            ("num_in", num_in), ("out_range", out_range), ("_memo", {})):
            object.__setattr__(self, name, value)
        pairs = (offset_ptr, in_idx, out_idx)
        if any(t is not None for t in pairs):
            if any(t is None for t in pairs):
                raise ValueError("KernelMap takes offset_ptr, in_idx and out_idx together, or none of them "
                                 "(then they are built from neighbors on first use)")
            self._memo[PAIRS] = pairs
        object.__setattr__(self, "trusted", not check_ranges)
        check_kernel_map(self, check_ranges)

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, made once per ``key`` and kept with the map (a dataflow's plan of this map:
        the key names the dataflow and its settings). Under torch.compile, with the value made by
        an eager call, Dynamo traces the lookup and the value becomes a constant of the graph."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def table_memo(self, key: Hashable, transposed: bool, build: Callable[[Tensor], T]) -> T:
        """``build(table)`` for this map's table (``transposed``: its transpose, ``neighbors_t``),
        made once per ``key``. A transposed conv's map and the strided map it inverts hold each
        other's transpose (see :meth:`transposed`), so what is built from a table (the implicit
        GEMM's reorderings) is built once for both."""
        shared, side = self.memo(TABLES, lambda: ({}, 0))
        entry = (key, side ^ transposed)  # side 0: the first map's table; 1: its transpose
        if entry not in shared:
            shared[entry] = build(self.neighbors_t if transposed else self.neighbors)
        return shared[entry]

    @property
    def pairs(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(offset_ptr, in_idx, out_idx)``, built from the table on first use (``ops.kmap_csr``;
        offset_ptr copied to the CPU, where the host sizes one GEMM per offset)."""
        return self.memo(PAIRS, self._build_pairs)

    def _build_pairs(self) -> Tuple[Tensor, Tensor, Tensor]:
        offset_ptr, in_idx, out_idx = ops.kmap_csr(self.neighbors)
        return offset_ptr.cpu(), in_idx, out_idx

    @property
    def has_pairs(self) -> bool:
        """Whether the pairs exist (handed in or built): no dataflow has asked for them otherwise."""
        return PAIRS in self._memo

    @property
    def offset_ptr(self) -> Tensor:
        """int64 ``[K + 1]`` on the CPU: pairs of offset k are ``offset_ptr[k] .. offset_ptr[k+1]``."""
        return self.pairs[0]

    @property
    def in_idx(self) -> Tensor:
        """int32 ``[P]``: input row of each pair."""
        return self.pairs[1]

    @property
    def out_idx(self) -> Tensor:
        """int32 ``[P]``: output row of each pair, ascending within an offset."""
        return self.pairs[2]

    @cached_property
    def neighbors_t(self) -> Tensor:
        """int32 ``[N_in, K]``: the transposed table, output row of input i at offset k, -1 if none."""
        return ops.kmap_transpose(self.neighbors, self.num_in, self.trusted)

    @cached_property
    def out_pos(self) -> Tensor:
        """int32 ``[N_out, K]``: index of the pair of output row o at offset k, -1 if none (the
        output-stationary scatter of batched groups reads it). Built on first use."""
        return self._pair_positions(self.out_idx, self.num_out)

    @cached_property
    def in_pos(self) -> Tensor:
        """int32 ``[N_in, K]``: index of the pair of input row i at offset k, -1 if none."""
        return self._pair_positions(self.in_idx, self.num_in)

    def _pair_positions(self, rows: Tensor, num_rows: int) -> Tensor:
        device = rows.device
        pos = torch.full((num_rows, self.num_offsets), -1, dtype=torch.int32, device=device)  # [N, K]
        offset_of_pair = torch.repeat_interleave(torch.arange(self.num_offsets, device=device),
                                                 self.pair_counts.to(device))              # [P]
        pos[rows.long(), offset_of_pair] = torch.arange(rows.shape[0], dtype=torch.int32, device=device)
        return pos

    @cached_property
    def bitmask(self) -> Tensor:
        """int32 ``[N_out, ceil(K / 32)]``: bit k % 32 of word k // 32 = neighbour k exists.

        Built on first use: the gather-GEMM-scatter and fused dataflows never need it.
        """
        return ops.kmap_bitmask(self.neighbors)

    @property
    def num_out(self) -> int:
        return self.out_coords.shape[0]

    @property
    def num_offsets(self) -> int:
        return self.neighbors.shape[1]

    @property
    def pair_counts(self) -> Tensor:
        """int64 ``[K]``: pairs per offset (``n_k``)."""
        return self.offset_ptr.diff()

    @staticmethod
    def from_neighbors(neighbors: Tensor, out_coords: Tensor, out_stride: Triple, num_in: int,
                       out_range: Optional[Triple] = None) -> "KernelMap":
        """A library map from its table (pairs built on first use)."""
        return KernelMap(neighbors, None, None, None, out_coords, out_stride, num_in, out_range, check_ranges=False)

    def transposed(self, out_coords: Tensor, out_stride: Triple, out_range: Optional[Triple] = None) -> "KernelMap":
        """The same pairs with input and output swapped; ``out_coords`` are this map's inputs. Its
        table is this map's ``neighbors_t`` and its ``neighbors_t`` this map's table (per offset the
        pairs are one-to-one), and the two share what is built from the tables (:meth:`table_memo`):
        in training the decoder's transposed conv and the encoder's strided conv transpose and
        reorder each table once. Only for maps the library built: a map handed in may repeat an
        (input, offset) pair, and then its transpose's transpose is not its table."""
        if not self.trusted or out_coords.shape[0] != self.num_in:
            neighbors = ops.kmap_transpose(self.neighbors, out_coords.shape[0], self.trusted)
            return KernelMap.from_neighbors(neighbors, out_coords, out_stride, self.num_out, out_range)
        inverse = KernelMap.from_neighbors(self.neighbors_t, out_coords, out_stride, self.num_out, out_range)
        inverse.__dict__["neighbors_t"] = self.neighbors  # (the cached_property's slot)
        shared, side = self.memo(TABLES, lambda: ({}, 0))
        inverse._memo[TABLES] = (shared, 1 - side)  # (a dict of their own: no cycle between the maps)
        return inverse


def check_kernel_map(kmap: KernelMap, check_ranges: bool = True) -> None:
    """Shapes, dtypes, devices and (``check_ranges``) index ranges and ``offset_ptr``'s values of a map
    and of the pairs it was handed, checked once (see :class:`KernelMap`)."""
    device = kmap.neighbors.device
    pairs = kmap._memo.get(PAIRS)
    names = ("neighbors", "out_coords") + (("in_idx", "out_idx") if pairs is not None else ())
    for name in names:
        t = getattr(kmap, name)
        if not isinstance(t, Tensor) or t.dtype != torch.int32:
            raise TypeError(f"KernelMap.{name} must be an int32 tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.device != device:
            raise ValueError(f"KernelMap.{name} is on {t.device} but neighbors are on {device}")
    if kmap.neighbors.dim() != 2 or kmap.neighbors.shape[0] != kmap.out_coords.shape[0]:
        raise ValueError(f"KernelMap.neighbors must have shape [N_out={kmap.out_coords.shape[0]}, K], "
                         f"got {tuple(kmap.neighbors.shape)}")
    if not isinstance(kmap.num_in, int) or kmap.num_in < 0:
        raise ValueError(f"KernelMap.num_in must be a non-negative int, got {kmap.num_in!r}")
    if pairs is None:
        if check_ranges and kmap.neighbors.numel():  # the table is what the CUDA kernels read
            lo, hi = torch.stack(torch.aminmax(kmap.neighbors)).tolist()  # one read-back
            if lo < -1 or hi >= kmap.num_in:
                raise ValueError(f"KernelMap.neighbors must hold -1 or rows in [0, {kmap.num_in}), got values "
                                 f"in [{lo}, {hi}]")
        return
    K = kmap.neighbors.shape[1]
    ptr = kmap.offset_ptr
    if (not isinstance(ptr, Tensor) or ptr.dtype != torch.int64 or ptr.device.type != "cpu"
            or tuple(ptr.shape) != (K + 1,)):
        raise ValueError(f"KernelMap.offset_ptr must be int64 [K + 1 = {K + 1}] on the CPU, got "
                         f"{getattr(ptr, 'dtype', type(ptr).__name__)} {tuple(getattr(ptr, 'shape', ()))} "
                         f"on {getattr(ptr, 'device', None)}")
    num_pairs = kmap.in_idx.shape[0]
    if kmap.out_idx.shape != (num_pairs,) or (check_ranges and (int(ptr[0]) != 0 or int(ptr[-1]) != num_pairs
                                                                or bool((ptr.diff() < 0).any()))):
        raise ValueError(f"KernelMap.offset_ptr must rise from 0 to the {num_pairs} pairs of in_idx / out_idx")
    if num_pairs and check_ranges:
        bounds = torch.stack([torch.stack(torch.aminmax(kmap.in_idx)), torch.stack(torch.aminmax(kmap.out_idx)),
                              torch.stack(torch.aminmax(kmap.neighbors))]).tolist()   # one read-back
        for name, (lo, hi), rows, absent in (("in_idx", bounds[0], kmap.num_in, 0),
                                             ("out_idx", bounds[1], kmap.num_out, 0),
                                             ("neighbors", bounds[2], kmap.num_in, -1)):
            if lo < absent or hi >= rows:
                raise ValueError(f"KernelMap.{name} must index rows in [0, {rows}), got values in [{lo}, {hi}]")


@dataclass(frozen=True)
class KernelMapKey:
    """What a map depends on besides the input coordinates. Built by :meth:`of`, which normalises
    the fields a conv kind ignores, so that equal maps share one key."""

    tensor_stride: Triple
    kernel_size: Triple
    stride: Triple
    dilation: Triple
    transposed: bool
    outputs: OutputRule = OutputRule.OCCUPIED
    padding: Optional[Triple] = None        # None: the anchoring of kernel_offsets
    spatial_range: Optional[Triple] = None  # of the input; only REACHED and generative maps clip to it
    generative: bool = False

    @staticmethod
    def of(tensor_stride: Triple, kernel_size: IntOrTriple, stride: IntOrTriple = 1,
           dilation: IntOrTriple = 1, transposed: bool = False, outputs: OutputRule = OutputRule.OCCUPIED,
           padding: Optional[IntOrTriple] = None, spatial_range: Optional[Triple] = None,
           generative: bool = False) -> "KernelMapKey":
        if not isinstance(outputs, OutputRule):  # (before the memo, which would call it unhashable)
            raise TypeError(f"outputs must be an OutputRule, got {outputs!r}")
        arguments = (tensor_stride, kernel_size, stride, dilation, transposed, outputs, padding, spatial_range,
                     generative)
        # A conv call asks for the same key each time: one lookup then. Only ints and tuples of ints
        # go through the memo, which would take True or 3.0 inside a tuple for an equal int.
        # (torch.compile traces the function itself, and warns of a memo's wrapper.)
        if all(map(_ints, (tensor_stride, kernel_size, stride, dilation, padding, spatial_range))) \
                and not torch.compiler.is_compiling():
            return _key_of(*arguments)
        return _key_of.__wrapped__(*arguments)

    def offsets(self, device: torch.device) -> Tensor:
        """int32 ``[K, 3]`` in coordinate units of the finer side (the input, or the output of a
        transposed conv), on ``device`` (cached: see :func:`scaled_offsets`)."""
        return scaled_offsets(self.kernel_size, self.dilation, self.padding, self.fine_stride, device)

    @property
    def fine_stride(self) -> Triple:
        if not self.transposed:
            return self.tensor_stride
        if any(t % s for t, s in zip(self.tensor_stride, self.stride)):
            raise ValueError(f"transposed conv with stride {self.stride} needs a tensor stride divisible by "
                             f"it, got tensor stride {self.tensor_stride}")
        return tuple(t // s for t, s in zip(self.tensor_stride, self.stride))

    def out_range(self, fine_range: Optional[Triple] = None) -> Optional[Triple]:
        """The output's spatial range, from the input's (or, for a transposed conv that inverts a
        strided one, the finer tensor's ``fine_range``); None when unknown."""
        if self.transposed and not self.generative:
            return fine_range
        if self.spatial_range is None:
            return None
        pad = self.padding or default_padding(self.kernel_size, self.dilation)
        span = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
        if self.generative:
            return tuple(max(0, (n - 1) * s - 2 * p + w + 1)
                         for n, s, p, w in zip(self.spatial_range, self.stride, pad, span))
        return tuple(max(0, (n + 2 * p - w - 1) // s + 1)
                     for n, s, p, w in zip(self.spatial_range, self.stride, pad, span))


def _ints(value: Any) -> bool:
    """None, an int or a tuple of 3 ints, by exact type (no bool, no float)."""
    return value is None or type(value) is int or (type(value) is tuple and len(value) == 3 and type(value[0]) is int
                                                   and type(value[1]) is int and type(value[2]) is int)


@functools.lru_cache(maxsize=4096, typed=True)
def _key_of(tensor_stride: Triple, kernel_size: IntOrTriple, stride: IntOrTriple, dilation: IntOrTriple,
            transposed: bool, outputs: OutputRule, padding: Optional[IntOrTriple], spatial_range: Optional[Triple],
            generative: bool) -> KernelMapKey:
    """KernelMapKey.of past its check of ``outputs``, memoised on its (hashable) arguments."""
    size, step = as_triple(kernel_size, "kernel_size", planar=1), as_triple(stride, "stride", planar=1)
    dil = as_triple(dilation, "dilation", planar=1)
    if generative and not transposed:
        raise ValueError("a generative conv is a transposed conv: pass transposed=True")
    pad = None if padding is None else as_triple(padding, "padding", minimum=0, planar=0)
    if pad is not None and pad == default_padding(size, dil):
        pad = None
    if generative:
        outputs = OutputRule.REACHED
    if (outputs is OutputRule.REACHED and _kernel_tiles_stride(size, step, dil) and pad is None
            and spatial_range is None):
        outputs = OutputRule.OCCUPIED  # the windows partition space: both rules give the same cells
    if outputs is OutputRule.OCCUPIED:
        if pad is not None:
            raise ValueError(f"padding {pad} needs outputs=OutputRule.REACHED (spconv's rule); the "
                             f"occupied-cell rule anchors kernels as kernel_offsets does (padding "
                             f"{default_padding(size, dil)})")
        spatial_range = None  # it bounds no occupied cell
    elif spatial_range is not None:
        spatial_range = as_triple(tuple(spatial_range), "spatial_range", minimum=0, planar=1)
    return KernelMapKey(tensor_stride, size, step, dil, transposed, outputs, pad, spatial_range, generative)


@dataclass
class KernelMapCache:
    """Maps and coordinates of one family of tensors; owned by tensors, never global.

    ``coords[t]`` holds the family's one coordinate set at tensor stride t, so that a strided conv
    reuses the coarser coordinates already made and a transposed conv finds the finer ones it
    returns to; ``ranges[t]`` their spatial range where known. Maps are served only for the
    coordinates held (:func:`bind_coords`): a conv whose outputs differ from the family's at that
    stride starts a new family (:func:`output_cache`).
    """

    kmaps: Dict[KernelMapKey, KernelMap] = field(default_factory=dict)
    coords: Dict[Triple, Tensor] = field(default_factory=dict)
    ranges: Dict[Triple, Optional[Triple]] = field(default_factory=dict)
    # Strides whose coordinates no occupied-cell downsampling made (a REACHED or generative map
    # made them, or a user supplied them with cache=): an occupied-cell strided conv computes its
    # own outputs instead of taking these.
    foreign: Set[Triple] = field(default_factory=set)
    # The version (torch's in-place counter) of coords[t] when the family took it: an in-place edit
    # afterwards would move the coordinates under their maps.
    versions: Dict[Triple, int] = field(default_factory=dict)
    # Strides whose coordinates are known valid (in range, unique): checked by the first map built on
    # them, or made by the library. Later builds there skip the checks (on CUDA: no read-back).
    checked: Set[Triple] = field(default_factory=set)
    # Hash tables (ops.coords_hash_table) of coords[t], built by the first HASH map that needs one and
    # queried by every later map there: submanifold maps of any size or dilation, strided maps
    # leaving t, and the tiling map arriving at t (whose downsampling made the coordinates).
    tables: Dict[Triple, ops.kmap.HashTable] = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        # Unpickled and deep-copied tensors start new version counters.
        self.__dict__.update(state)
        self.__dict__.setdefault("checked", set())
        self.__dict__.setdefault("tables", {})
        self.versions = {stride: coords._version for stride, coords in self.coords.items()}


def same_rows(a: Tensor, b: Tensor) -> bool:
    """Whether coordinate tensors ``a`` and ``b`` hold the same rows in the same order (the same
    tensor: no read-back; else one comparison, a synchronisation on CUDA)."""
    return a is b or (a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b)))


def bind_coords(cache: KernelMapCache, tensor_stride: Triple, coords: Tensor, *, foreign: bool = False) -> None:
    """Make ``coords`` the family's coordinates at ``tensor_stride``, or check that they are the ones
    it holds there (same rows, same order): the maps of a cache belong to its coordinates, and
    serving them for other coordinates would convolve the wrong neighbours. ``foreign``: the
    coordinates come from outside the family (see :attr:`KernelMapCache.foreign`)."""
    known = cache.coords.get(tensor_stride)
    if known is None:
        register_coords(cache, tensor_stride, coords)
        if foreign:
            cache.foreign.add(tensor_stride)
    elif not torch.compiler.is_compiling() and known._version != cache.versions.get(tensor_stride, known._version):
        raise ValueError(f"the coordinates at tensor stride {tensor_stride} were changed in place after the "
                         f"kernel-map cache took them; build a new SparseTensor from a copy instead")
    elif not same_rows(known, coords):
        raise ValueError(
            f"the kernel-map cache holds other coordinates at tensor stride {tensor_stride} "
            f"({known.shape[0]} rows; these have {coords.shape[0]}, or the rows differ in value or order): "
            f"a cache serves the one coordinate set it was built on. Leave out cache= for new coordinates "
            f"(they get a cache of their own), or derive the tensor from the one whose coordinates these "
            f"are (with_feats)")


def register_coords(cache: KernelMapCache, tensor_stride: Triple, coords: Tensor) -> None:
    """Record ``coords`` as the family's at a stride it does not hold yet (and their version; not
    under torch.compile, which cannot guard on it)."""
    if tensor_stride in cache.coords:
        return
    cache.coords[tensor_stride] = coords
    if not torch.compiler.is_compiling():
        cache.versions[tensor_stride] = coords._version


def output_cache(cache: KernelMapCache, kmap: KernelMap) -> KernelMapCache:
    """The family of a conv's output: the input's when it holds the output coordinates at the
    output stride (a map's own outputs are registered there when the stride was new), else a new
    family (a generative conv, or rules mixed at one stride)."""
    known = cache.coords.get(kmap.out_stride)
    return cache if known is not None and same_rows(known, kmap.out_coords) else KernelMapCache()


def scaled_offsets(kernel_size: Triple, dilation: Triple, padding: Optional[Triple], scale: Triple,
                   device: torch.device) -> Tensor:
    """int32 ``[K, 3]``: :func:`~pointsparse.offsets.kernel_offsets` times ``scale`` (a tensor
    stride), made once per geometry and device: no host-to-device copy per map. Read-only."""
    if torch.compiler.is_compiling():  # traced into the graph; torch.compile would warn of a memo
        return _scaled_offsets_memo.__wrapped__(kernel_size, dilation, padding, scale, device)
    return _scaled_offsets_memo(kernel_size, dilation, padding, scale, device)


@functools.lru_cache(maxsize=1024)
def _scaled_offsets_memo(kernel_size: Triple, dilation: Triple, padding: Optional[Triple], scale: Triple,
                         device: torch.device) -> Tensor:
    offsets = kernel_offsets(kernel_size, dilation, padding) * torch.tensor(scale, dtype=torch.int32)
    return offsets.to(device)  # blocking, once per geometry: the tensor is then read from any stream


def _mul(a: Triple, b: Triple) -> Triple:
    return (a[0] * b[0], a[1] * b[1], a[2] * b[2])


def build_neighbors(in_coords: Tensor, out_coords: Tensor, offsets: Tensor, symmetric: bool,
                    algo: Optional[KernelMapAlgo], checked: bool = False) -> Tensor:
    """Neighbour table int32 ``[N_out, K]`` by the chosen algorithm (None: the device's default;
    offsets in coordinate units; ``checked``: both coordinate sets known valid, see :mod:`.ops.kmap`)."""
    algo = algo or default_kmap_algo(in_coords.device)
    build = ops.build_kmap_hash if algo is KernelMapAlgo.HASH else ops.build_kmap_sort
    return build(in_coords, out_coords, offsets, symmetric, checked)


def downsample_coords(coords: Tensor, factor: Triple, algo: Optional[KernelMapAlgo], checked: bool = False) -> Tensor:
    """Unique ``floor(c / factor) * factor`` per batch, int32 ``[M, 4]``, in first-occurrence order
    (``algo`` None: the device's default)."""
    algo = algo or default_kmap_algo(coords.device)
    down = ops.downsample_coords_hash if algo is KernelMapAlgo.HASH else ops.downsample_coords_sort
    return down(coords, factor, checked)


def coords_table(cache: KernelMapCache, stride: Triple, coords: Tensor, checked: bool) -> ops.kmap.HashTable:
    """The family's hash table of ``coords``, its coordinates at ``stride``: built on first use (with
    the checks of ``checked``), then shared by every map there."""
    table = cache.tables.get(stride)
    if table is None:
        table = cache.tables[stride] = ops.coords_hash_table(coords, checked)
    return table


def build_kernel_map(coords: Tensor, tensor_stride: Triple, kernel_size: IntOrTriple,
                     stride: IntOrTriple = 1, dilation: IntOrTriple = 1,
                     config: ConvConfig = ConvConfig(),
                     out_coords: Optional[Tensor] = None, *, checked: bool = False,
                     cache: Optional[KernelMapCache] = None) -> KernelMap:
    """Uncached forward (non-transposed) map from ``coords`` int32 ``[N, 4]`` at ``tensor_stride``.

    ``out_coords`` may supply the coarser coordinates of a strided conv (they must be what
    downsampling would give, possibly in another order); by default they are computed.
    ``checked``: ``coords`` (and ``out_coords``) are known valid, so the build checks no values.
    ``cache``: the family of ``coords`` (and of ``out_coords``, when given): a HASH build queries its
    hash tables (:func:`coords_table`) instead of building one per map.
    """
    size, step = as_triple(kernel_size, "kernel_size", planar=1), as_triple(stride, "stride", planar=1)
    dil = as_triple(dilation, "dilation", planar=1)
    submanifold = step == (1, 1, 1)
    out_stride = _mul(tensor_stride, step)
    tiling = not submanifold and _kernel_tiles_stride(size, step, dil)
    algo = config.kmap or default_kmap_algo(coords.device)
    shared = cache is not None and algo is KernelMapAlgo.HASH
    if submanifold and size == (1, 1, 1):  # every row is its own one neighbour: nothing to search
        rows = torch.arange(coords.shape[0], dtype=torch.int32, device=coords.device)
        return KernelMap(rows[:, None], torch.tensor([0, coords.shape[0]]), rows, rows, coords, out_stride,
                         coords.shape[0], check_ranges=False)
    if submanifold:
        out_coords = coords
    elif tiling and out_coords is None and not (shared and out_stride not in cache.coords):
        out_coords, neighbors = ops.downsample_tiling(coords, size, tensor_stride, checked)
        return KernelMap.from_neighbors(neighbors, out_coords, out_stride, coords.shape[0])
    made = out_coords is None
    if made:  # (a tiling map into a new stride of the family comes here, so that it keeps their table)
        out_coords = downsample_coords(coords, out_stride, algo, checked)
    if tiling:
        table = None
        if shared:  # made here: the outputs' table, the family's once the map stands
            table = ops.coords_hash_table(out_coords, True) if made else coords_table(cache, out_stride, out_coords,
                                                                                       checked)
        neighbors = ops.kmap_tiling(coords, out_coords, size, tensor_stride, checked, table)
        if shared and made:
            cache.tables[out_stride] = table
    else:  # (the identity and tiling maps above need no offsets, nor their copy to the device)
        offsets = scaled_offsets(size, dil, None, tensor_stride, coords.device)         # [K, 3]
        symmetric = submanifold and all(s % 2 == 1 for s in size)
        if shared:  # the table checked coords if nothing had: a submanifold map has nothing left to check
            table = coords_table(cache, tensor_stride, coords, checked)
            neighbors = ops.build_kmap_hash(coords, out_coords, offsets, symmetric, checked or submanifold, table)
        else:
            neighbors = build_neighbors(coords, out_coords, offsets, symmetric, algo, checked)
    return KernelMap.from_neighbors(neighbors, out_coords, out_stride, coords.shape[0])


def _kernel_tiles_stride(size: Triple, step: Triple, dilation: Triple) -> bool:
    """Whether the kernel cells of the outputs partition space: kernel == stride, offsets 0 .. k-1
    (even sizes, or 1) and no dilation. Then every input has exactly one output and one offset,
    found by hashing its cell corner once (``downsample_tiling``, or ``kmap_tiling`` when the
    output coordinates are given) whatever ``config.kmap`` says."""
    return size == step and dilation == (1, 1, 1) and all(k % 2 == 0 or k == 1 for k in size)


def cached_kernel_map(cache: KernelMapCache, coords: Tensor, tensor_stride: Triple,
                      kernel_size: IntOrTriple, stride: IntOrTriple = 1, dilation: IntOrTriple = 1,
                      transposed: bool = False, config: ConvConfig = ConvConfig(), *,
                      outputs: OutputRule = OutputRule.OCCUPIED, padding: Optional[IntOrTriple] = None,
                      spatial_range: Optional[Triple] = None, generative: bool = False) -> KernelMap:
    """The map of a conv on ``coords`` at ``tensor_stride``, from ``cache`` or built into it
    (``outputs``, ``padding``, ``spatial_range`` and ``generative``: see :class:`KernelMapKey`)."""
    key = KernelMapKey.of(tensor_stride, kernel_size, stride, dilation, transposed, outputs, padding,
                          spatial_range, generative)
    bind_coords(cache, tensor_stride, coords)
    if key in cache.kmaps:
        return cache.kmaps[key]
    checked = tensor_stride in cache.checked
    # A profiler range around builds only (a cache hit costs nothing): bench minkunet's breakdown.
    with torch.autograd.profiler.record_function(KERNEL_MAP_RANGE):
        if key.generative:
            kmap = build_generative_kernel_map(coords, key, config, checked=checked)
        elif transposed:
            kmap = _transposed_kernel_map(cache, coords, key, config)
        elif key.outputs is OutputRule.REACHED:
            kmap = build_reached_kernel_map(coords, key, config, checked=checked)
        else:
            out_stride = _mul(tensor_stride, key.stride)
            known = None if out_stride in cache.foreign else cache.coords.get(out_stride)
            kmap = build_kernel_map(coords, tensor_stride, key.kernel_size, key.stride, key.dilation, config,
                                    out_coords=known,
                                    checked=checked and (known is None or out_stride in cache.checked),
                                    cache=cache)
        if kmap.out_stride not in cache.coords:
            register_coords(cache, kmap.out_stride, kmap.out_coords)
            cache.ranges[kmap.out_stride] = kmap.out_range
            if key.outputs is OutputRule.REACHED and not transposed or key.generative:
                cache.foreign.add(kmap.out_stride)
            else:
                cache.checked.add(kmap.out_stride)  # floored from coordinates in range, unique
    if _checks_its_input(key):
        cache.checked.add(tensor_stride)
    cache.kmaps[key] = kmap
    return kmap


def _checks_its_input(key: KernelMapKey) -> bool:
    """Whether building ``key``'s map checks its input coordinates whole (range and duplicates), as
    the hash and sort builders (and the family's hash table) do; not the identity map (reads none),
    a transposed map (reuses the strided one) or a tiling map (skips inputs off the stride grid)."""
    identity = key.kernel_size == (1, 1, 1) and key.stride == (1, 1, 1) and not key.transposed
    tiling = (key.outputs is OutputRule.OCCUPIED and key.stride != (1, 1, 1)
              and _kernel_tiles_stride(key.kernel_size, key.stride, key.dilation))
    return not (identity and key.outputs is OutputRule.OCCUPIED or key.transposed or tiling)


def reached_cells(coords: Tensor, shifts: Tensor, step: Triple, out_range: Optional[Triple]) -> Tensor:
    """Unique ``c - shift`` over inputs c and rows of ``shifts [K, 3]`` that are multiples of
    ``step`` (and, with ``out_range``, inside ``[0, out_range)`` in units of ``step``), sorted by
    (batch, x, y, z): int32 ``[M, 4]``."""
    cells = coords[:, None, 1:] - shifts.to(coords.device)[None]                 # [N, K, 3]
    grid = torch.tensor(step, dtype=torch.int32, device=coords.device)
    keep = (cells % grid == 0).all(-1)                                              # [N, K]
    if out_range is not None:
        index = torch.div(cells, grid, rounding_mode="floor")
        keep &= ((index >= 0) & (index < torch.tensor(out_range, device=coords.device))).all(-1)
    batch = coords[:, None, :1].expand(-1, shifts.shape[0], 1)                      # [N, K, 1]
    candidates = torch.cat([batch, cells], -1)[keep]                                # [M', 4]
    return _unique_sorted(candidates)


def _unique_sorted(coords: Tensor) -> Tensor:
    """Unique rows of int32 ``[M, 4]``, sorted by (batch, x, y, z)."""
    return coords if coords.shape[0] == 0 else coords[ops.unique_coords(coords)[0]]


def build_reached_kernel_map(coords: Tensor, key: KernelMapKey, config: ConvConfig = ConvConfig(), *,
                             checked: bool = False) -> KernelMap:
    """Uncached map of the ``REACHED`` rule (spconv's regular and strided conv) for ``key``."""
    offsets = key.offsets(coords.device)                                            # [K, 3]
    out_stride = _mul(key.tensor_stride, key.stride)
    out_range = key.out_range()
    out_coords = reached_cells(coords, offsets, out_stride, out_range)
    neighbors = build_neighbors(coords, out_coords, offsets, False, config.kmap, checked)
    return KernelMap.from_neighbors(neighbors, out_coords, out_stride, coords.shape[0], out_range)


def build_generative_kernel_map(coords: Tensor, key: KernelMapKey, config: ConvConfig = ConvConfig(), *,
                                checked: bool = False) -> KernelMap:
    """Uncached map of a generative transposed conv: outputs every fine cell ``o + d_k * t`` an
    input o reaches; output c takes input o through offset k when ``c = o + d_k * t``."""
    fine = key.fine_stride
    offsets = key.offsets(coords.device)                                            # [K, 3]
    out_range = key.out_range()
    out_coords = reached_cells(coords, -offsets, fine, out_range)
    neighbors = build_neighbors(coords, out_coords, -offsets, False, config.kmap, checked)
    return KernelMap.from_neighbors(neighbors, out_coords, fine, coords.shape[0], out_range)


def _transposed_kernel_map(cache: KernelMapCache, coords: Tensor, key: KernelMapKey,
                           config: ConvConfig) -> KernelMap:
    fine_stride = key.fine_stride
    step = key.stride
    fine_coords = cache.coords.get(fine_stride)
    if fine_coords is None:
        raise ValueError(
            f"transposed conv with stride {step} on a tensor of stride {key.tensor_stride} needs the "
            f"coordinates at stride {fine_stride}, made by the strided conv it inverts; this "
            f"tensor's cache has strides {sorted(cache.coords)}")
    fine_range = cache.ranges.get(fine_stride)
    forward = cached_kernel_map(cache, fine_coords, fine_stride, key.kernel_size, step, key.dilation, False,
                                config, outputs=key.outputs, padding=key.padding, spatial_range=fine_range)
    if not same_rows(forward.out_coords, coords):
        raise ValueError(f"transposed conv: the tensor's {coords.shape[0]} coordinates are not the "
                         f"{forward.num_out} outputs of the strided conv it inverts (from stride {fine_stride})")
    return forward.transposed(fine_coords, fine_stride, fine_range)
