"""Choices that shape how a convolution runs, as frozen records passed explicitly."""

import enum
from dataclasses import dataclass


class KernelMapAlgo(enum.Enum):
    """How kernel maps are found; both give identical maps."""

    HASH = "hash"  # open-addressing hash table of packed coordinates
    SORT = "sort"  # sorted packed keys, merged (CPU) or binary-searched (CUDA) per offset


@dataclass(frozen=True)
class ConvConfig:
    # SORT by default: on a 2-core CPU it built the submanifold k3 map of a 92k-voxel scan 2-3x
    # faster than HASH (python -m pointsparse.bench kmap); GPU timings may favour HASH.
    kmap: KernelMapAlgo = KernelMapAlgo.SORT
