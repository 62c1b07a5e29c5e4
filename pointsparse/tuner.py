"""Per-layer strategy tuning: :func:`tune` picks the fastest candidate for each layer signature and
remembers it.

Layers are grouped by signature (tensor stride, kernel size, stride, dilation, transposed,
channels, device, dtype); each group's candidates (:mod:`pointsparse.strategies`) are timed on the
real inputs of its layers over the samples, forward only (``mode="inference"``) or forward, input
gradient and weight gradient each (``mode="training"``; gather-GEMM-scatter may then combine the
fastest grouping of each pass), and the fastest is set as every layer's ``config``. Choices persist in a JSON file keyed by device name, torch and pointsparse versions,
mode and signature, and are reused on the next call unless ``force``. Configs are plain module
attributes, outside ``state_dict``, so checkpoints stay portable across devices. Under
``torch.distributed``, rank 0 tunes and broadcasts its choices.
"""

import json
import os
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .config import ConvConfig, Dataflow, OutputRule
from .grouping import ConvGrouping
from .profiler import LayerInput, capture_conv_inputs, time_layer
from .strategies import candidates, config_from_dict, config_to_dict
from .tensor import SparseTensor

MODES = ("inference", "training")


def default_cache_path() -> Path:
    cache = Path(os.environ.get("POINTSPARSE_CACHE", Path.home() / ".cache" / "pointsparse"))
    return cache / "tuned.json"


def signature(layer: LayerInput) -> str:
    m, x = layer.module, layer.x
    rule = "" if m.outputs is OutputRule.OCCUPIED else f" {m.outputs.value} p{list(m.padding or [])}"
    rule += " generative" if m.generative else ""
    return (f"ts{list(x.stride)} k{list(m.kernel_size)} s{list(m.stride)} d{list(m.dilation)} "
            f"t{int(m.transposed)}{rule} c{m.in_channels}->{m.out_channels} {x.feats.device.type} {x.feats.dtype}")


def environment_key(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    try:
        version = metadata.version("pointsparse")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{name} | torch {torch.__version__} | pointsparse {version}"


def _measure(layers: List[LayerInput], mode: str, repeats: int, quick: bool) -> ConvConfig:
    """The fastest candidate on ``layers``. In training the three passes are timed separately, so
    gather-GEMM-scatter may also take each pass's fastest grouping (ConvGrouping per pass) when that
    combination beats every single candidate."""
    timed = []  # (strategy, forward ms, input-grad ms, weight-grad ms) summed over the layers
    for strategy in candidates(layers[0].x.feats.device, layers[0].module.weight.shape[0], quick):
        timings = [time_layer(layer, strategy, repeats, gpu_times=False) for layer in layers]
        timed.append((strategy, sum(t.forward_ms for t in timings), sum(t.input_grad_ms for t in timings),
                      sum(t.weight_grad_ms for t in timings)))
    if mode == "inference":
        return min(timed, key=lambda t: t[1])[0].config
    best = min(timed, key=lambda t: t[1] + t[2] + t[3])
    grouped = [t for t in timed if t[0].config.dataflow is Dataflow.GATHER_GEMM_SCATTER]
    if not grouped:
        return best[0].config
    per_pass = [min(grouped, key=lambda t: t[i]) for i in (1, 2, 3)]
    if per_pass[0][1] + per_pass[1][2] + per_pass[2][3] >= best[1] + best[2] + best[3]:
        return best[0].config
    forward, input_grad, weight_grad = (t[0].config.grouping for t in per_pass)
    return replace(per_pass[0][0].config, grouping=ConvGrouping(forward.forward, input_grad.input_grad,
                                                                 weight_grad.weight_grad))


def tune(model: nn.Module, samples: Sequence[SparseTensor], mode: str = "inference", *,
         cache_path: Optional[os.PathLike] = None, force: bool = False, repeats: int = 3,
         quick: bool = False) -> Dict[str, ConvConfig]:
    """Sets the fastest config on every SparseConv3d of ``model``; returns them by module name."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(samples) == 0:
        raise ValueError("tune needs at least one sample SparseTensor")
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    groups: Dict[str, List[LayerInput]] = {}
    for sample in samples:
        for layer in capture_conv_inputs(model, sample):
            groups.setdefault(signature(layer), []).append(layer)
    leader = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    chosen: Dict[str, Dict[str, object]] = {}
    if leader:
        chosen = _tune_groups(groups, mode, samples[0].feats.device, cache_path, force, repeats, quick)
    if dist.is_available() and dist.is_initialized():
        shared = [chosen]
        dist.broadcast_object_list(shared, src=0)
        chosen = shared[0]
    configs = {}
    for sig, layers in groups.items():
        config = config_from_dict(chosen[sig])
        for layer in layers:
            layer.module.config = config
            configs[layer.name] = config
    return configs


def _tune_groups(groups: Dict[str, List[LayerInput]], mode: str, device: torch.device,
                 cache_path: Optional[os.PathLike], force: bool, repeats: int,
                 quick: bool) -> Dict[str, Dict[str, object]]:
    path = Path(cache_path) if cache_path is not None else default_cache_path()
    store = json.loads(path.read_text()) if path.exists() else {}
    known = store.setdefault(environment_key(device), {}).setdefault(mode, {})
    measured = False
    chosen = {}
    for sig, layers in groups.items():
        if force or sig not in known:
            known[sig] = config_to_dict(_measure(layers, mode, repeats, quick))
            measured = True
        chosen[sig] = known[sig]
    if measured:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=2) + "\n")
        tmp.replace(path)
    return chosen
