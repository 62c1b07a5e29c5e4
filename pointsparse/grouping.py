"""Grouping of kernel offsets into batched GEMMs for the gather-GEMM-scatter dataflow.

Per-offset pair counts ``n_k`` differ; one GEMM per offset (SEPARATE) makes many small GEMMs. A group
of offsets padded to its largest ``n_k`` runs as one batched GEMM, trading padded rows (redundant
MACs) for fewer, larger GEMMs (TorchSparse, MLSys'22). Strategies:

* ``SEPARATE``: one GEMM per offset.
* ``SYMMETRIC``: offset k with offset K-1-k (``d`` with ``-d`` for a centred kernel; equal ``n_k``
  in submanifold convs, so no padding), one batched GEMM per pair.
* ``FIXED``: the user's groups (every offset exactly once); a group runs batched.
* ``DENSE``: every offset padded to ``max n_k``, one batched GEMM (groups of at most 128 offsets).
* ``ADAPTIVE``: walk offsets in symmetric order ``0, K-1, 1, K-2, ...``; close a group when adding the
  next offset would make ``1 - min/max > epsilon``; a group whose largest ``n_k`` is below
  ``threshold`` runs as one batched GEMM, otherwise one GEMM per member (TorchSparse's rule).

The submanifold centre (identity offset) is always one plain GEMM outside any group. Offsets without
pairs are left out. A plan is pure index arithmetic on the pair counts, cached per kernel map.
"""

import enum
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from .work import RowWork

MAX_GROUP_OFFSETS = 128  # a batched group's offsets travel by value to the CUDA kernels


class Grouping(enum.Enum):
    SEPARATE = "separate"
    SYMMETRIC = "symmetric"
    FIXED = "fixed"
    DENSE = "dense"
    ADAPTIVE = "adaptive"


@dataclass(frozen=True)
class GroupingConfig:
    """A strategy and its parameters. ``groups``: FIXED's groups of offset indices.
    ``epsilon``, ``threshold``: ADAPTIVE's redundancy tolerance and batched-size limit (rows)."""

    strategy: Grouping = Grouping.SEPARATE
    groups: Optional[Tuple[Tuple[int, ...], ...]] = None
    epsilon: float = 0.3
    threshold: int = 20000

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Grouping):
            raise TypeError(f"strategy must be a Grouping, got {self.strategy!r}")
        if (self.groups is not None) != (self.strategy is Grouping.FIXED):
            raise ValueError("groups are given exactly when the strategy is Grouping.FIXED")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(tuple(int(k) for k in g) for g in self.groups))
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")


GroupingLike = Union[Grouping, GroupingConfig]


def as_grouping_config(value: GroupingLike) -> GroupingConfig:
    if isinstance(value, GroupingConfig):
        return value
    if isinstance(value, Grouping):
        if value is Grouping.FIXED:
            raise ValueError("Grouping.FIXED needs its groups: GroupingConfig(Grouping.FIXED, groups=...)")
        return GroupingConfig(value)
    raise TypeError(f"grouping must be a Grouping or a GroupingConfig, got {type(value).__name__}")


@dataclass(frozen=True)
class ConvGrouping:
    """Groupings of the three passes of a conv: forward, input gradient, weight gradient."""

    forward: GroupingConfig = GroupingConfig()
    input_grad: GroupingConfig = GroupingConfig()
    weight_grad: GroupingConfig = GroupingConfig()

    @staticmethod
    def of(value: Union[GroupingLike, "ConvGrouping"]) -> "ConvGrouping":
        """A bare strategy or config applies to all three passes."""
        if isinstance(value, ConvGrouping):
            return value
        config = as_grouping_config(value)
        return ConvGrouping(config, config, config)

    @property
    def is_separate(self) -> bool:
        return all(c.strategy is Grouping.SEPARATE for c in (self.forward, self.input_grad, self.weight_grad))


@dataclass(frozen=True)
class GroupingPlan(RowWork):
    """Groups of offsets and how each runs, with the work it implies (:class:`~pointsparse.work.RowWork`).

    ``groups[g]``: offset indices; ``batched[g]``: one padded batched GEMM (True) or one GEMM per member;
    ``padded[g]``: rows per member when batched (the group's largest ``n_k``).
    """

    groups: Tuple[Tuple[int, ...], ...]
    batched: Tuple[bool, ...]
    padded: Tuple[int, ...]
    pair_counts: Tuple[int, ...]
    identity_offset: int

    @property
    def useful_rows(self) -> int:
        return sum(self.pair_counts)

    @property
    def computed_rows(self) -> int:
        rows = self.pair_counts[self.identity_offset] if self.identity_offset >= 0 else 0
        for group, batched, padded in zip(self.groups, self.batched, self.padded):
            rows += len(group) * padded if batched else sum(self.pair_counts[k] for k in group)
        return rows

    @property
    def gemm_calls(self) -> int:
        calls = 1 if self.identity_offset >= 0 else 0
        for group, batched in zip(self.groups, self.batched):
            calls += 1 if batched else sum(1 for k in group if self.pair_counts[k] > 0)
        return calls

    def encode(self) -> Tuple[int, ...]:
        """The op's flat plan: ``[size, batched, k_1 .. k_size]`` per group."""
        flat = []
        for group, batched in zip(self.groups, self.batched):
            flat += [len(group), int(batched), *group]
        return tuple(flat)


def symmetric_order(num_offsets: int) -> Tuple[int, ...]:
    """``0, K-1, 1, K-2, ...``: each offset next to its mirror (the centre last for odd K)."""
    order = []
    for k in range((num_offsets + 1) // 2):
        order.append(k)
        if num_offsets - 1 - k != k:
            order.append(num_offsets - 1 - k)
    return tuple(order)


def plan_grouping(pair_counts: Sequence[int], config: GroupingLike, identity_offset: int = -1) -> GroupingPlan:
    """The plan of ``config`` for offsets with ``pair_counts`` (``n_k``, one per offset)."""
    config = as_grouping_config(config)
    counts = tuple(int(n) for n in pair_counts)
    K = len(counts)
    if identity_offset >= K or identity_offset < -1:
        raise ValueError(f"identity_offset must be -1 or below {K}, got {identity_offset}")
    active = [k for k in symmetric_order(K) if k != identity_offset and counts[k] > 0]
    strategy = config.strategy
    if strategy is Grouping.SEPARATE:
        groups = [(k,) for k in active]
        batched = [False] * len(groups)
    elif strategy is Grouping.SYMMETRIC:
        groups = _chunks(active, 2)
        batched = [len(g) > 1 for g in groups]
    elif strategy is Grouping.DENSE:
        groups = _chunks(active, MAX_GROUP_OFFSETS)
        batched = [len(g) > 1 for g in groups]
    elif strategy is Grouping.FIXED:
        groups = _fixed_groups(config.groups, K, identity_offset, counts)
        batched = [len(g) > 1 for g in groups]
    else:
        groups = _adaptive_groups(active, counts, config.epsilon)
        batched = [len(g) > 1 and max(counts[k] for k in g) < config.threshold for g in groups]
    padded = [max(counts[k] for k in g) if b else 0 for g, b in zip(groups, batched)]
    return GroupingPlan(tuple(tuple(g) for g in groups), tuple(batched), tuple(padded), counts, identity_offset)


def _chunks(offsets: Sequence[int], size: int):
    return [tuple(offsets[i:i + size]) for i in range(0, len(offsets), size)]


def _adaptive_groups(order: Sequence[int], counts: Sequence[int], epsilon: float):
    groups, current, low, high = [], [], 0, 0
    for k in order:
        n = counts[k]
        if current:
            new_low, new_high = min(low, n), max(high, n)
            if 1 - new_low / new_high > epsilon or len(current) == MAX_GROUP_OFFSETS:
                groups.append(tuple(current))
                current = []
            else:
                current.append(k)
                low, high = new_low, new_high
                continue
        current, low, high = [k], n, n
    if current:
        groups.append(tuple(current))
    return groups


def _fixed_groups(groups, K: int, identity_offset: int, counts: Sequence[int]):
    """The user's groups, validated; the identity offset and offsets without pairs dropped."""
    seen = [0] * K
    for group in groups:
        if len(group) == 0:
            raise ValueError("Grouping.FIXED: a group is empty")
        for k in group:
            if not 0 <= k < K:
                raise ValueError(f"Grouping.FIXED: offset {k} is outside [0, {K})")
            seen[k] += 1
    missing = [k for k in range(K) if seen[k] == 0]
    repeated = [k for k in range(K) if seen[k] > 1]
    if missing or repeated:
        raise ValueError(f"Grouping.FIXED must name every offset of the {K} exactly once; "
                         f"missing {missing}, repeated {repeated}")
    kept = []
    for group in groups:
        members = tuple(k for k in group if k != identity_offset and counts[k] > 0)
        if len(members) > MAX_GROUP_OFFSETS:
            raise ValueError(f"Grouping.FIXED: a group holds at most {MAX_GROUP_OFFSETS} offsets")
        if members:
            kept.append(members)
    return kept
