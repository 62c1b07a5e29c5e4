"""The candidate strategies of a conv layer, with their names and the work each implies.

A strategy is a named :class:`~pointsparse.config.ConvConfig`. The profiler times every candidate on
a layer's real input; the tuner picks among them. Work is counted in rows of ``C_in x C_out`` MACs
(useful: pairs that exist; computed: what the dataflow multiplies, padding and absent neighbours
included) and in GEMM calls where the dataflow makes GEMM calls.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .config import ConvConfig, Dataflow, KernelMapAlgo
from .grouping import ConvGrouping, Grouping, GroupingConfig
from .implicit import ImplicitGemmConfig, implicit_gemm_work
from .kmap import KernelMap
from .work import RowWork

ADAPTIVE_EPSILONS = (0.1, 0.3, 0.5)
ADAPTIVE_THRESHOLDS = (5000, 20000)
IMPLICIT_TILES = (16, 32, 64, 128)
IMPLICIT_SPLITS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Strategy:
    name: str
    config: ConvConfig

    @property
    def family(self) -> str:
        """fused, ggs or implicit."""
        return self.name.split(" ")[0]


FAMILIES = ("fused", "ggs", "implicit")


def check_families(families) -> None:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown strategy families {unknown}; choose among {list(FAMILIES)}")


def candidates(device: torch.device, num_offsets: int, quick: bool = False) -> List[Strategy]:
    """Every strategy that runs on ``device`` for a kernel of ``num_offsets`` offsets: fused (CPU),
    gather-GEMM-scatter with each grouping (an epsilon x threshold grid for ADAPTIVE) and implicit
    GEMM unsorted / sorted with 1-4 splits (at most one per offset) and tiles of 16-128 rows.
    ``quick`` keeps one setting of each family (for tests and smoke runs)."""
    ggs = Dataflow.GATHER_GEMM_SCATTER
    found = []
    if device.type == "cpu":
        found.append(Strategy("fused", ConvConfig(dataflow=Dataflow.FUSED)))
    for strategy in (Grouping.SEPARATE, Grouping.SYMMETRIC, Grouping.DENSE):
        found.append(Strategy(f"ggs {strategy.value}", ConvConfig(dataflow=ggs, grouping=strategy)))
    epsilons, thresholds = ((0.3,), (20000,)) if quick else (ADAPTIVE_EPSILONS, ADAPTIVE_THRESHOLDS)
    for epsilon in epsilons:
        for threshold in thresholds:
            grouping = GroupingConfig(Grouping.ADAPTIVE, epsilon=epsilon, threshold=threshold)
            found.append(Strategy(f"ggs adaptive e{epsilon} t{threshold}", ConvConfig(dataflow=ggs, grouping=grouping)))
    tiles, splits = ((32,), (1, 2)) if quick else (IMPLICIT_TILES, IMPLICIT_SPLITS)
    for tile in tiles:
        found.append(Strategy(f"implicit t{tile} unsorted", ConvConfig(
            dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(tile, False, 1))))
        for split in (s for s in splits if s <= num_offsets):
            found.append(Strategy(f"implicit t{tile} sorted s{split}", ConvConfig(
                dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(tile, True, split))))
    return found


@dataclass(frozen=True)
class Work(RowWork):
    useful_rows: int
    computed_rows: int
    gemm_calls: Optional[int]  # None where the dataflow makes no GEMM calls (fused, implicit)


def work_of(config: ConvConfig, kmap: KernelMap, identity_offset: int) -> Work:
    """The forward pass's work under ``config`` on ``kmap``."""
    useful = int(kmap.pair_counts.sum())
    if config.dataflow is Dataflow.IMPLICIT_GEMM:
        work = implicit_gemm_work(kmap.neighbors, config.implicit)
        return Work(work.useful_rows, work.computed_rows, None)
    if config.dataflow is Dataflow.GATHER_GEMM_SCATTER:
        plan = kmap.grouping_plan(config.grouping.forward, identity_offset)
        return Work(plan.useful_rows, plan.computed_rows, plan.gemm_calls)
    return Work(useful, useful, None)


def config_to_dict(config: ConvConfig) -> Dict[str, object]:
    """A JSON-able record of a config (the tuner's cache, the profiler's report)."""
    def grouping(g: GroupingConfig) -> Dict[str, object]:
        return {"strategy": g.strategy.value, "groups": [list(x) for x in g.groups] if g.groups else None,
                "epsilon": g.epsilon, "threshold": g.threshold}

    passes = config.grouping
    return {"kmap": config.kmap.value, "dataflow": config.dataflow.value,
            "grouping": {"forward": grouping(passes.forward), "input_grad": grouping(passes.input_grad),
                         "weight_grad": grouping(passes.weight_grad)},
            "implicit": {"tile_rows": config.implicit.tile_rows, "reorder": config.implicit.reorder,
                         "splits": config.implicit.splits}}


def config_from_dict(record: Dict[str, object]) -> ConvConfig:
    def grouping(g: Dict[str, object]) -> GroupingConfig:
        groups = g["groups"]
        return GroupingConfig(Grouping(g["strategy"]), tuple(tuple(x) for x in groups) if groups else None,
                              g["epsilon"], g["threshold"])

    passes = record["grouping"]
    implicit = record["implicit"]
    return ConvConfig(KernelMapAlgo(record["kmap"]), Dataflow(record["dataflow"]),
                      ConvGrouping(grouping(passes["forward"]), grouping(passes["input_grad"]),
                                   grouping(passes["weight_grad"])),
                      ImplicitGemmConfig(implicit["tile_rows"], implicit["reorder"], implicit["splits"]))
