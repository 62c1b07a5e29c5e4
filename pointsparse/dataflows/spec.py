"""What a dataflow is to the rest of the library: how it runs a conv over a kernel map and where,
the strategies the tuner and profiler may pick, and the work each implies."""

from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional

import torch
from torch import Tensor

from ..config import ConvConfig, Dataflow
from ..kmap import KernelMap
from ..work import RowWork

Run = Callable[[Tensor, Tensor, KernelMap, int, ConvConfig], Tensor]
RunEpilogue = Callable[[Tensor, Tensor, KernelMap, int, ConvConfig, Tensor, Tensor, bool, Optional[Tensor]],
                       Optional[Tensor]]

FLOATS = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class Strategy:
    """A named config of one dataflow (``family``: the dataflow's short name)."""

    name: str
    config: ConvConfig
    family: str


@dataclass(frozen=True)
class Work(RowWork):
    useful_rows: int
    computed_rows: int
    gemm_calls: Optional[int]  # None where the dataflow makes no GEMM calls (fused, implicit)


@dataclass(frozen=True)
class DataflowSpec:
    """A dataflow: ``run(feats, weight, kmap, identity_offset, config)`` gives the output features;
    ``run_epilogue`` (where the dataflow can end in an eval-mode batch norm itself,
    :class:`pointsparse.functional.Epilogue`) takes the epilogue's scale, shift, ReLU flag and
    residual features as well, and returns None where its kernels do not take these operands;
    ``candidates(num_offsets, quick)`` are its strategies for a kernel of ``num_offsets`` offsets
    (``quick``: one setting, for tests and smoke runs); ``work(config, kmap, identity_offset)`` is the
    forward pass's work."""

    dataflow: Dataflow
    family: str
    devices: FrozenSet[str]         # device types it runs on
    dtypes: FrozenSet[torch.dtype]  # feature dtypes it accepts
    run: Run
    summary: str
    candidates: Callable[[int, bool], List[Strategy]]
    work: Callable[[ConvConfig, KernelMap, int], Work]
    run_epilogue: Optional[RunEpilogue] = None

    def runs_on(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type in self.devices and dtype in self.dtypes


def needs_input_grad(feats: Tensor) -> bool:
    """Whether a conv of ``feats`` will be asked for the features' gradient: only then does a
    dataflow build its input gradient's tables (a transposed table, pair positions)."""
    return torch.is_grad_enabled() and feats.requires_grad
