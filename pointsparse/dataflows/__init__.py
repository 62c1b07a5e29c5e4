"""The registry of dataflows: what each runs on, how it is called, its strategies and their work.

One module per dataflow (:mod:`.ggs`, :mod:`.fused`, :mod:`.implicit`) owns its run, plan,
candidates and work; its ops, fake kernels and autograd are in :mod:`pointsparse.ops`.
``functional.conv3d`` resolves the configured dataflow here; the profiler, the tuner, the
cross-check and the benchmarks ask :func:`dataflows_for` what runs on a device.
"""

from typing import Dict, List

import torch

from ..config import Dataflow
from . import fused, ggs, implicit
from .spec import DataflowSpec, Strategy, Work

REGISTRY: Dict[Dataflow, DataflowSpec] = {spec.dataflow: spec for spec in (ggs.SPEC, fused.SPEC, implicit.SPEC)}

# What Dataflow.AUTO picks: the first of these that runs on the device.
AUTO_ORDER = (Dataflow.FUSED, Dataflow.GATHER_GEMM_SCATTER)


def dataflows_for(device: torch.device, dtype: torch.dtype = torch.float32) -> List[DataflowSpec]:
    """Every registered dataflow that runs on ``device`` with ``dtype``."""
    return [spec for spec in REGISTRY.values() if spec.runs_on(torch.device(device), dtype)]


def runs_on(dataflow: Dataflow, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    return REGISTRY[dataflow].runs_on(torch.device(device), dtype)


def resolve(dataflow: Dataflow, device: torch.device, dtype: torch.dtype) -> DataflowSpec:
    """The spec that runs ``dataflow`` on ``device``; ValueError naming what runs there otherwise."""
    if dataflow is Dataflow.AUTO:
        for candidate in AUTO_ORDER:
            if REGISTRY[candidate].runs_on(device, dtype):
                return REGISTRY[candidate]
    elif REGISTRY[dataflow].runs_on(device, dtype):
        return REGISTRY[dataflow]
    available = ", ".join(f"Dataflow.{s.dataflow.name}" for s in dataflows_for(device, dtype)) or "none"
    raise ValueError(f"{dataflow} does not run on {device} with {dtype}; available there: {available}")


__all__ = ["AUTO_ORDER", "REGISTRY", "DataflowSpec", "Strategy", "Work", "dataflows_for", "fused", "ggs", "implicit",
           "resolve", "runs_on"]
