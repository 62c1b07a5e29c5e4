"""The fused dataflow (CPU): register-blocked tiles read, multiply and add rows in place, with no
gathered copy and no GEMM call; it can end in an eval-mode batch norm, residual and ReLU
(:mod:`pointsparse.ops.conv_fused`)."""

from typing import List, Optional

from torch import Tensor

from .. import ops
from ..ops import norm
from ..config import ConvConfig, Dataflow
from ..kmap import KernelMap
from .spec import FLOATS, DataflowSpec, Strategy, Work


def run(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig) -> Tensor:
    return ops.conv_fused(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out, identity_offset)


def run_epilogue(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig,
                 scale: Tensor, shift: Tensor, relu: bool, residual: Optional[Tensor]) -> Optional[Tensor]:
    """The conv with the epilogue in its kernels (differentiable), where the CPU's fused kernels take
    every operand (float32 / float64 of one dtype, no autocast); None otherwise."""
    if not norm.fused_with(feats, weight, scale, shift, residual):
        return None
    return ops.conv_fused_affine_relu(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out,
                                      identity_offset, scale, shift, relu, residual)


def candidates(num_offsets: int, quick: bool = False) -> List[Strategy]:
    return [Strategy("fused", ConvConfig(dataflow=Dataflow.FUSED), "fused")]


def work(config: ConvConfig, kmap: KernelMap, identity_offset: int) -> Work:
    useful = int(kmap.pair_counts.sum())
    return Work(useful, useful, None)


SPEC = DataflowSpec(Dataflow.FUSED, "fused", frozenset({"cpu"}), FLOATS, run,
                    "register-blocked tiles multiply rows in place, no gathered copy", candidates, work, run_epilogue)
