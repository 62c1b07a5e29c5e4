"""Choices that shape how a convolution runs, as frozen records passed explicitly."""

import enum
from dataclasses import dataclass

import torch


class KernelMapAlgo(enum.Enum):
    """How kernel maps are found; both give identical maps."""

    HASH = "hash"  # open-addressing hash table of packed coordinates
    SORT = "sort"  # sorted packed keys, merged (CPU) or binary-searched (CUDA) per offset


class Dataflow(enum.Enum):
    """How the per-offset products ``out[out_idx_k] += feats[in_idx_k] @ W[k]`` are computed; every
    dataflow gives the same result up to rounding."""

    AUTO = "auto"  # FUSED on the CPU, GATHER_GEMM_SCATTER elsewhere
    # Gather the rows of each offset, one ATen GEMM (MKL / cuBLAS), scatter-add: every device.
    GATHER_GEMM_SCATTER = "gather_gemm_scatter"
    # Register-blocked tiles read, multiply and add rows in place, no gathered copy (CPU only).
    FUSED = "fused"

    def resolve(self, device: torch.device) -> "Dataflow":
        """The dataflow that runs on ``device``; ValueError for FUSED off the CPU."""
        if self is Dataflow.AUTO:
            return Dataflow.FUSED if device.type == "cpu" else Dataflow.GATHER_GEMM_SCATTER
        if self is Dataflow.FUSED and device.type != "cpu":
            raise ValueError(f"Dataflow.FUSED runs on the CPU only, the tensor is on {device}; "
                             "use Dataflow.AUTO or Dataflow.GATHER_GEMM_SCATTER")
        return self


@dataclass(frozen=True)
class ConvConfig:
    # SORT by default: on a 2-core CPU it built the submanifold k3 map of a 92k-voxel scan 2-3x
    # faster than HASH (python -m pointsparse.bench kmap); GPU timings may favour HASH.
    kmap: KernelMapAlgo = KernelMapAlgo.SORT
    # AUTO picks FUSED on the CPU: 3-5x faster than GATHER_GEMM_SCATTER on a 92k-voxel scan
    # (python -m pointsparse.bench conv).
    dataflow: Dataflow = Dataflow.AUTO
