"""pointsparse: sparse convolution over voxelised point clouds, on CPU and CUDA."""

import torch  # noqa: F401  (the extension links against torch's libraries)

from . import _C  # noqa: F401  (registers torch.ops.pointsparse.*)
from .source_layout import map_source_folders

map_source_folders()  # pointsparse.models / .datasets in a checkout built in place (no install)
from . import dataflows, functional, nn, ops, point_voxel, pruning
from .config import ConvConfig, Dataflow, KernelMapAlgo, OutputRule
from .grouping import ConvGrouping, Grouping, GroupingConfig, GroupingPlan, plan_grouping
from .implicit import ImplicitGemmConfig, ImplicitGemmWork, implicit_gemm_work
from .kmap import KernelMap, KernelMapCache, KernelMapKey, build_kernel_map, cached_kernel_map
from .offsets import kernel_offsets
from .quantize import sparse_collate, sparse_quantize
from .tensor import SparseTensor, kernel_map

# Tooling, loaded on first use: `import pointsparse` stays the engine (no benchmarks, CLI or plots).
_TOOLING = {"profile": "profiler", "ProfileReport": "profiler", "tune": "tuner"}


def __getattr__(name: str):
    if name in _TOOLING:
        import importlib

        return getattr(importlib.import_module(f".{_TOOLING[name]}", __name__), name)
    raise AttributeError(f"module 'pointsparse' has no attribute {name!r}")

__all__ = [
    "ConvConfig",
    "ConvGrouping",
    "Dataflow",
    "Grouping",
    "GroupingConfig",
    "GroupingPlan",
    "ImplicitGemmConfig",
    "ImplicitGemmWork",
    "KernelMap",
    "KernelMapAlgo",
    "KernelMapCache",
    "KernelMapKey",
    "OutputRule",
    "SparseTensor",
    "build_kernel_map",
    "dataflows",
    "cached_kernel_map",
    "functional",
    "implicit_gemm_work",
    "kernel_map",
    "kernel_offsets",
    "nn",
    "plan_grouping",
    "point_voxel",
    "pruning",
    "ops",
    "profile",
    "ProfileReport",
    "sparse_collate",
    "sparse_quantize",
    "tune",
]

