"""Choices that shape how a convolution runs, as frozen records passed explicitly."""

import enum
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .grouping import ConvGrouping, GroupingConfig, Grouping
from .implicit import ImplicitGemmConfig


class KernelMapAlgo(enum.Enum):
    """How kernel maps are found; both give identical maps."""

    HASH = "hash"  # open-addressing hash table of packed coordinates
    SORT = "sort"  # sorted packed keys, merged (CPU) or binary-searched (CUDA) per offset


# The faster algorithm per device type, measured on the submanifold k3 map of a real scan: SORT on
# the CPU (2-3x faster than HASH on 2 cores, 92k voxels: python -m pointsparse.bench kmap), HASH on
# CUDA (H200, 78,744 voxels: 1.17 ms against 1.30 ms, the GPU run of 6060b1a).
KMAP_ALGO_BY_DEVICE = {"cpu": KernelMapAlgo.SORT, "cuda": KernelMapAlgo.HASH}


def default_kmap_algo(device) -> KernelMapAlgo:
    """What ``ConvConfig(kmap=None)`` builds maps with on ``device``."""
    return KMAP_ALGO_BY_DEVICE.get(torch.device(device).type, KernelMapAlgo.SORT)


class OutputRule(enum.Enum):
    """Which cells a convolution outputs (a semantic choice, unlike the rest of this module)."""

    # The occupied cells: the input cells at stride 1 (submanifold); at stride s one output per
    # occupied coarse cell, floor(c / s) (MinkowskiEngine; TorchSparse's downsample_mode="minkowski").
    OCCUPIED = "occupied"
    # Every cell of the output grid the kernel reaches from an input: at stride 1 the set grows by
    # the kernel (a regular, not submanifold, conv); at stride s every coarse cell whose window holds
    # an input (spconv's SparseConv3d; TorchSparse's default downsample_mode="spconv"). Takes padding.
    REACHED = "reached"


class Dataflow(enum.Enum):
    """How the per-offset products ``out[out_idx_k] += feats[in_idx_k] @ W[k]`` are computed; every
    dataflow gives the same result up to rounding. Which devices and dtypes each runs on is recorded
    in :mod:`pointsparse.dataflows`."""

    AUTO = "auto"  # per device and dtype, by measurement: dataflows.AUTO_ORDER
    # Gather the rows of each offset, ATen GEMMs (MKL / cuBLAS), scatter-add: every device; offsets
    # grouped into batched GEMMs by ConvConfig.grouping.
    GATHER_GEMM_SCATTER = "gather_gemm_scatter"
    # Register-blocked tiles read, multiply and add rows in place, no gathered copy (CPU only).
    FUSED = "fused"
    # Output-stationary implicit GEMM over the neighbour table, tiles of rows reordered by
    # neighbour mask skip the offsets none of their rows needs (ConvConfig.implicit).
    IMPLICIT_GEMM = "implicit_gemm"


@dataclass(frozen=True)
class ConvConfig:
    # None: the faster per device (default_kmap_algo). Both build identical maps.
    kmap: Optional[KernelMapAlgo] = None
    # AUTO: FUSED on the CPU, IMPLICIT_GEMM on CUDA but for float64 (dataflows.AUTO_ORDER).
    dataflow: Dataflow = Dataflow.AUTO
    # Grouping of offsets into batched GEMMs (GATHER_GEMM_SCATTER): a Grouping member (default
    # parameters), a GroupingConfig, or a ConvGrouping with one config per pass (forward, input
    # gradient, weight gradient). Stored as a ConvGrouping.
    grouping: Union[Grouping, GroupingConfig, ConvGrouping] = Grouping.SEPARATE
    # Tile rows, reordering and mask splits of IMPLICIT_GEMM.
    implicit: ImplicitGemmConfig = ImplicitGemmConfig()

    def __post_init__(self) -> None:
        if self.kmap is not None and not isinstance(self.kmap, KernelMapAlgo):
            raise TypeError(f"kmap must be a KernelMapAlgo or None (per device), got {self.kmap!r}")
        if not isinstance(self.dataflow, Dataflow):
            raise TypeError(f"dataflow must be a Dataflow, got {self.dataflow!r}")
        object.__setattr__(self, "grouping", ConvGrouping.of(self.grouping))
        if not isinstance(self.implicit, ImplicitGemmConfig):
            raise TypeError(f"implicit must be an ImplicitGemmConfig, got {self.implicit!r}")
