"""The registry of dataflows: what each runs on, how it is called, its strategies and their work.

One module per dataflow (:mod:`.ggs`, :mod:`.fused`, :mod:`.implicit`) owns its run, plan,
candidates and work; its ops, fake kernels and autograd are in :mod:`pointsparse.ops`.
``functional.conv3d`` resolves the configured dataflow here; the profiler, the tuner, the
cross-check and the benchmarks ask :func:`dataflows_for` what runs on a device.
"""

from typing import Dict, FrozenSet, List, Tuple

import torch

from ..config import Dataflow
from . import fused, ggs, implicit
from .spec import FLOATS, DataflowSpec, Strategy, Work

REGISTRY: Dict[Dataflow, DataflowSpec] = {spec.dataflow: spec for spec in (ggs.SPEC, fused.SPEC, implicit.SPEC)}

# What Dataflow.AUTO picks on a device type: the first (dataflow, dtypes) that takes the features'
# dtype and runs there. CPU: FUSED, 3-5x GATHER_GEMM_SCATTER on a 92k-voxel scan (bench conv). CUDA:
# IMPLICIT_GEMM for float16 and float32, measured on an H200 (GPU run of 6060b1a, 78,744 voxels):
# submanifold k3 layers of 16-128 channels took 1.7-3.6 ms forward+backward against 3.4-4.8 ms, and
# ten MinkUNet layers in float16 18.9-21.7 ms against 34.1 ms. bfloat16 (not measured on its own)
# runs float16's WMMA kernels (k 16, float accumulators) and follows float16; float64, which the
# implicit GEMM runs only on its SIMT kernel, stays on GATHER_GEMM_SCATTER (cuBLAS).
AUTO_ORDER: Dict[str, Tuple[Tuple[Dataflow, FrozenSet[torch.dtype]], ...]] = {
    "cpu": ((Dataflow.FUSED, FLOATS), (Dataflow.GATHER_GEMM_SCATTER, FLOATS)),
    "cuda": ((Dataflow.IMPLICIT_GEMM, frozenset({torch.float16, torch.bfloat16, torch.float32})),
             (Dataflow.GATHER_GEMM_SCATTER, FLOATS)),
}


def dataflows_for(device: torch.device, dtype: torch.dtype = torch.float32) -> List[DataflowSpec]:
    """Every registered dataflow that runs on ``device`` with ``dtype``."""
    return [spec for spec in REGISTRY.values() if spec.runs_on(torch.device(device), dtype)]


def runs_on(dataflow: Dataflow, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    return REGISTRY[dataflow].runs_on(torch.device(device), dtype)


def resolve(dataflow: Dataflow, device: torch.device, dtype: torch.dtype) -> DataflowSpec:
    """The spec that runs ``dataflow`` on ``device``; ValueError naming what runs there otherwise."""
    if dataflow is Dataflow.AUTO:
        device = torch.device(device)
        for candidate, dtypes in AUTO_ORDER.get(device.type, ((Dataflow.GATHER_GEMM_SCATTER, FLOATS),)):
            if dtype in dtypes and REGISTRY[candidate].runs_on(device, dtype):
                return REGISTRY[candidate]
    elif REGISTRY[dataflow].runs_on(device, dtype):
        return REGISTRY[dataflow]
    available = ", ".join(f"Dataflow.{s.dataflow.name}" for s in dataflows_for(device, dtype)) or "none"
    raise ValueError(f"{dataflow} does not run on {device} with {dtype}; available there: {available}")


__all__ = ["AUTO_ORDER", "REGISTRY", "DataflowSpec", "Strategy", "Work", "dataflows_for", "fused", "ggs", "implicit",
           "resolve", "runs_on"]
