"""Gather-GEMM-scatter: gather each offset's input rows, one ATen GEMM per offset (or per group of
offsets, zero-padded into a batched GEMM by a grouping plan), scatter-add into the outputs
(:mod:`pointsparse.ops.conv_ggs`; plans: :mod:`pointsparse.grouping`)."""

from typing import List, Tuple

from torch import Tensor

from .. import ops
from ..config import ConvConfig, Dataflow
from ..grouping import ConvGrouping, Grouping, GroupingConfig, GroupingPlan, plan_grouping
from ..kmap import KernelMap
from .spec import FLOATS, DataflowSpec, Strategy, Work, needs_input_grad

ADAPTIVE_EPSILONS = (0.1, 0.3, 0.5)
ADAPTIVE_THRESHOLDS = (5000, 20000)


def grouping_plan(kmap: KernelMap, config: GroupingConfig, identity_offset: int) -> GroupingPlan:
    """The plan of ``config`` for the map's pair counts, made once and kept with the map."""
    return kmap.memo(("grouping", config, identity_offset),
                     lambda: plan_grouping(kmap.pair_counts.tolist(), config, identity_offset))


def run(feats: Tensor, weight: Tensor, kmap: KernelMap, identity_offset: int, config: ConvConfig) -> Tensor:
    grouping = config.grouping
    if grouping.is_separate:
        return ops.conv_gather_scatter(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.num_out,
                                       identity_offset)
    plans = _encoded_plans(kmap, grouping, identity_offset)
    # The input gradient scatters through in_pos: made only when that gradient will be asked for.
    in_pos = kmap.in_pos if needs_input_grad(feats) else kmap.neighbors.new_empty((0, kmap.num_offsets))
    return ops.conv_grouped(feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.out_pos, in_pos,
                            kmap.num_out, identity_offset, *plans)


def _encoded_plans(kmap: KernelMap, grouping: ConvGrouping, identity_offset: int) -> Tuple[Tuple[int, ...], ...]:
    """The three passes' plans, encoded for the op. Under torch.compile, with the plans in the map's
    memo (by an eager call), Dynamo traces the lookup and the plans become constants of the graph:
    no graph break. (Not ``assume_constant_result``: torch 2.11's Dynamo cannot pass it a frozen
    dataclass.)"""
    return tuple(grouping_plan(kmap, config, identity_offset).encode()
                 for config in (grouping.forward, grouping.input_grad, grouping.weight_grad))


def candidates(num_offsets: int, quick: bool = False) -> List[Strategy]:
    """Each fixed grouping, and ADAPTIVE over a grid of epsilon x threshold (one point when ``quick``)."""
    ggs = Dataflow.GATHER_GEMM_SCATTER
    found = [Strategy(f"ggs {g.value}", ConvConfig(dataflow=ggs, grouping=g), "ggs")
             for g in (Grouping.SEPARATE, Grouping.SYMMETRIC, Grouping.DENSE)]
    epsilons, thresholds = ((0.3,), (20000,)) if quick else (ADAPTIVE_EPSILONS, ADAPTIVE_THRESHOLDS)
    for epsilon in epsilons:
        for threshold in thresholds:
            grouping = GroupingConfig(Grouping.ADAPTIVE, epsilon=epsilon, threshold=threshold)
            found.append(Strategy(f"ggs adaptive e{epsilon} t{threshold}", ConvConfig(dataflow=ggs, grouping=grouping),
                                  "ggs"))
    return found


def work(config: ConvConfig, kmap: KernelMap, identity_offset: int) -> Work:
    plan = grouping_plan(kmap, config.grouping.forward, identity_offset)
    return Work(plan.useful_rows, plan.computed_rows, plan.gemm_calls)


SPEC = DataflowSpec(Dataflow.GATHER_GEMM_SCATTER, "ggs", frozenset({"cpu", "cuda"}), FLOATS, run,
                    "gather rows, ATen GEMMs (one per offset, or batched per group of offsets), scatter-add",
                    candidates, work)
