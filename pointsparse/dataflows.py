"""The registry of dataflows: what each runs on and how it is called.

``functional.conv3d`` looks the configured dataflow up here; the profiler and the tuner enumerate
:func:`dataflows_for` a device and dtype. A dataflow's ``run`` takes the features, the weight, the
kernel map, the identity offset (or -1) and the config, and returns the output features; a dataflow
that can end in an eval-mode batch norm itself (:class:`pointsparse.functional.Epilogue`) also has
``run_epilogue``, which takes the epilogue's scale, shift, ReLU flag and residual features as well.
"""

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import torch
from torch import Tensor

from . import ops
from .config import ConvConfig, Dataflow
from .kmap import KernelMap

Run = Callable[[Tensor, Tensor, KernelMap, int, ConvConfig], Tensor]
RunEpilogue = Callable[[Tensor, Tensor, KernelMap, int, ConvConfig, Tensor, Tensor, bool, Optional[Tensor]], Tensor]

_FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class DataflowSpec:
    dataflow: Dataflow
    devices: FrozenSet[str]         # device types it runs on
    dtypes: FrozenSet[torch.dtype]  # feature dtypes it accepts
    run: Run
    summary: str
    run_epilogue: Optional[RunEpilogue] = None  # float32 / float64 only

    def runs_on(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type in self.devices and dtype in self.dtypes


def _gather_gemm_scatter(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int,
                         config: ConvConfig) -> Tensor:
    grouping = config.grouping
    if grouping.is_separate:
        return ops.conv_gather_scatter(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out,
                                       identity_offset)
    plans = _encoded_plans(kmap, grouping, identity_offset)
    return ops.conv_grouped(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.out_pos, kmap.in_pos,
                            kmap.num_out, identity_offset, *plans)


def _encoded_plans(kmap: KernelMap, grouping, identity_offset: int) -> Tuple[Tuple[int, ...], ...]:
    """The three passes' plans, encoded for the op. Under torch.compile, with the plans cached in the
    map (by an eager call), Dynamo traces the cache lookup and the plans become constants of the
    graph: no graph break. (Not ``assume_constant_result``: torch 2.11's Dynamo cannot pass it a
    frozen dataclass.)"""
    return tuple(kmap.grouping_plan(config, identity_offset).encode()
                 for config in (grouping.forward, grouping.input_grad, grouping.weight_grad))


def _fused(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig) -> Tensor:
    return ops.conv_fused(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out, identity_offset)


def _fused_epilogue(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig,
                    scale: Tensor, shift: Tensor, relu: bool, residual: Optional[Tensor]) -> Tensor:
    return ops.conv_fused_affine_relu(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out,
                                      identity_offset, scale, shift, relu, residual)


def _implicit_gemm(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int,
                   config: ConvConfig) -> Tensor:
    forward, backward = _reorderings(kmap, config.implicit)
    return ops.conv_implicit(feats, weight, kmap.neighbors, forward.order, forward.tile_masks, kmap.neighbors_t,
                             backward.order, backward.tile_masks, kmap.offset_ptr, kmap.in_idx, kmap.out_idx,
                             config.implicit.tile_rows)


def _reorderings(kmap: KernelMap, implicit):
    """The forward and input-gradient reorderings of the map, cached in it (traced under torch.compile
    as in ``_encoded_plans``)."""
    return kmap.reordering(implicit), kmap.reordering(implicit, transposed=True)


REGISTRY: Dict[Dataflow, DataflowSpec] = {
    Dataflow.GATHER_GEMM_SCATTER: DataflowSpec(
        Dataflow.GATHER_GEMM_SCATTER, frozenset({"cpu", "cuda"}), _FLOATS, _gather_gemm_scatter,
        "gather rows, ATen GEMMs (one per offset, or batched per group of offsets), scatter-add"),
    Dataflow.FUSED: DataflowSpec(
        Dataflow.FUSED, frozenset({"cpu"}), _FLOATS, _fused,
        "register-blocked tiles multiply rows in place, no gathered copy", _fused_epilogue),
    Dataflow.IMPLICIT_GEMM: DataflowSpec(
        Dataflow.IMPLICIT_GEMM, frozenset({"cpu", "cuda"}), _FLOATS, _implicit_gemm,
        "output-stationary tiles of mask-sorted rows, offsets skipped per tile, no atomics"),
}

# What Dataflow.AUTO picks: the first of these that runs on the device.
AUTO_ORDER = (Dataflow.FUSED, Dataflow.GATHER_GEMM_SCATTER)


def dataflows_for(device: torch.device, dtype: torch.dtype) -> List[DataflowSpec]:
    """Every registered dataflow that runs on ``device`` with ``dtype``."""
    return [spec for spec in REGISTRY.values() if spec.runs_on(device, dtype)]


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
