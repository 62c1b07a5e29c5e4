"""Choices that shape how a convolution runs, as frozen records passed explicitly."""

import enum
from dataclasses import dataclass


class KernelMapAlgo(enum.Enum):
    """How kernel maps are found; both give identical maps."""

    HASH = "hash"  # open-addressing hash table of packed coordinates
    SORT = "sort"  # sorted packed keys, merged (CPU) or binary-searched (CUDA) per offset


@dataclass(frozen=True)
class ConvConfig:
    kmap: KernelMapAlgo = KernelMapAlgo.HASH
