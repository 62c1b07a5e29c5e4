"""The candidate strategies of a conv layer, with their names and the work each implies.

A strategy is a named :class:`~pointsparse.config.ConvConfig`. The profiler times every candidate on
a layer's real input; the tuner picks among them. Work is counted in rows of ``C_in x C_out`` MACs
(useful: pairs that exist; computed: what the dataflow multiplies, padding and absent neighbours
included) and in GEMM calls where the dataflow makes GEMM calls.
"""

from typing import Dict, List

import torch

from .config import ConvConfig, Dataflow, KernelMapAlgo
from .dataflows import REGISTRY, Strategy, Work, resolve
from .grouping import ConvGrouping, Grouping, GroupingConfig
from .implicit import ImplicitGemmConfig
from .kmap import KernelMap

FAMILIES = tuple(spec.family for spec in REGISTRY.values())


def check_families(families) -> None:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown strategy families {unknown}; choose among {list(FAMILIES)}")


def candidates(device: torch.device, num_offsets: int, quick: bool = False) -> List[Strategy]:
    """Every strategy of every dataflow that runs on ``device``, for a kernel of ``num_offsets``
    offsets (see each dataflow's ``candidates``). ``quick`` keeps one setting of each family (for
    tests and smoke runs)."""
    device = torch.device(device)
    return [strategy for spec in REGISTRY.values() if device.type in spec.devices
            for strategy in spec.candidates(num_offsets, quick)]


def work_of(config: ConvConfig, kmap: KernelMap, identity_offset: int) -> Work:
    """The forward pass's work under ``config`` on ``kmap``."""
    return resolve(config.dataflow, kmap.neighbors.device, torch.float32).work(config, kmap, identity_offset)


def config_to_dict(config: ConvConfig) -> Dict[str, object]:
    """A JSON-able record of a config (the tuner's cache, the profiler's report)."""
    def grouping(g: GroupingConfig) -> Dict[str, object]:
        return {"strategy": g.strategy.value, "groups": [list(x) for x in g.groups] if g.groups else None,
                "epsilon": g.epsilon, "threshold": g.threshold}

    passes = config.grouping
    return {"kmap": None if config.kmap is None else config.kmap.value, "dataflow": config.dataflow.value,
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
    kmap = None if record["kmap"] is None else KernelMapAlgo(record["kmap"])
    return ConvConfig(kmap, Dataflow(record["dataflow"]),
                      ConvGrouping(grouping(passes["forward"]), grouping(passes["input_grad"]),
                                   grouping(passes["weight_grad"])),
                      ImplicitGemmConfig(implicit["tile_rows"], implicit["reorder"], implicit["splits"]))
