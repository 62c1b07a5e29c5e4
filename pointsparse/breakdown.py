"""Where one step of a network goes: ``torch.profiler`` events attributed to conv layers and passes,
on the host and, on CUDA, on the GPU.

Every profiler event of the step, on every thread (autograd runs the CUDA backward on a device
thread of its own, not the caller's), is attributed by its chain of ancestors: to the kernel maps
(the ``pointsparse::kernel_map`` range the package places), to a conv layer's forward (``layer:NAME``
ranges placed here by forward hooks), input gradient or weight gradient (backward nodes matched to
the forward op by sequence number), or to batch norm, activation, concatenation, residual
additions, loss, head, optimiser and other ops. Host time is each event's self time; GPU time is
the duration of the kernels each event launched itself (the profiler's CUDA activity). The step's
wall time not covered by any event is Python and dispatch overhead. Per step it also counts kernel
launches and peak memory, and :func:`count_host_syncs` counts host-device synchronisations.
"""

import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.autograd.profiler import record_function

from .kmap import KERNEL_MAP_RANGE
from .nn import SparseConv3d
from .nn.feature_ops import LINEAR_RANGE

LAYER_PREFIX = "layer:"
CONV_PARTS = ("forward", "input grad", "weight grad")
# (category, substrings of event names) in the order they are tried, nearest event first.
OP_CATEGORIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("optimiser", ("Optimizer.", "sgd", "_foreach")),
    ("loss", ("nll_loss", "log_softmax", "cross_entropy")),
    ("batch norm", ("batch_norm", "channel_moments", "affine_relu", "BatchNormReLU")),  # fused BN+ReLU included
    ("activation", ("relu", "threshold", "clamp_min")),
    ("concatenation", ("aten::cat", "CatBackward")),
    ("head (linear)", ("addmm", "AddmmBackward", "aten::mm", "aten::linear")),
    ("residual add", ("aten::add", "AddBackward")),
)
# Device activity that is a copy or a fill, not a kernel launch.
NOT_KERNELS = ("Memcpy", "Memset")
SYNC_WARNING = "synchronizing CUDA operation"


def _layer_ranges(model: nn.Module) -> List[object]:
    """Forward hooks that open a ``layer:NAME`` profiler range around every SparseConv3d."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, SparseConv3d):
            def pre(m, inputs, name=name):
                m._breakdown_range = record_function(LAYER_PREFIX + name)
                m._breakdown_range.__enter__()

            def post(m, inputs, output):
                m._breakdown_range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _chain(event) -> List[object]:
    """The event and its ancestors, nearest first."""
    out = []
    while event is not None:
        out.append(event)
        event = event.cpu_parent
    return out


def _category(chain: List[object], layer_of_seq: Dict[int, str]) -> Tuple[str, Optional[str]]:
    """(category, layer or None) of an event from its chain of ancestors, nearest first. Backward
    nodes of conv ops are found by their forward op's sequence number (``layer_of_seq``: a layer
    name, or LINEAR_RANGE for the head's)."""
    names = [e.name for e in chain]
    if KERNEL_MAP_RANGE in names:
        return "kernel maps", None
    if LINEAR_RANGE in names:
        return "head (linear)", None
    for e in chain:
        if e.name.startswith(LAYER_PREFIX):
            return "forward", e.name[len(LAYER_PREFIX):]
        if e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in layer_of_seq:
            if layer_of_seq[e.sequence_nr] == LINEAR_RANGE:
                return "head (linear)", None
            weight = any("weight_grad" in n for n in names)
            return ("weight grad" if weight else "input grad"), layer_of_seq[e.sequence_nr]
    for name in names:
        for category, keys in OP_CATEGORIES:
            if any(k in name for k in keys):
                return category, None
    return "other ops", None


def _forward_layers(events: List[object]) -> Dict[int, str]:
    """Sequence number of every forward conv op inside a layer range (or the head's) -> its layer:
    the backward nodes carry the same number."""
    layer_of_seq: Dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and e.name.startswith("pointsparse::conv"):
            for a in _chain(e)[1:]:
                if a.name.startswith(LAYER_PREFIX):
                    layer_of_seq[e.sequence_nr] = a.name[len(LAYER_PREFIX):]
                    break
                if a.name == LINEAR_RANGE:
                    layer_of_seq[e.sequence_nr] = LINEAR_RANGE
                    break
    return layer_of_seq


def _launches(event) -> int:
    return sum(1 for k in event.kernels if not k.name.startswith(NOT_KERNELS))


def breakdown(model: nn.Module, step: Callable[[], object], device: torch.device) -> Dict[str, object]:
    """Where one profiled ``step()`` of ``model`` (a pointsparse network) spends its time, in ms:
    ``categories_ms`` and ``layers_ms`` (per layer: forward, input grad, weight grad) of host self
    time; on CUDA also ``categories_gpu_ms``, ``layers_gpu_ms``, ``gpu_ms``, ``kernel_launches``,
    ``kernel_maps_gpu_ms`` and ``peak_memory_mib``. ``kernel_maps_ms``: host time inside the map
    builds (on CUDA it includes their waits for the GPU)."""
    on_cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    handles = _layer_ranges(model)
    try:
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            step()
            if on_cuda:
                torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3
    finally:
        for h in handles:
            h.remove()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    layer_of_seq = _forward_layers(events)
    host: Dict[str, float] = {}
    gpu: Dict[str, float] = {}
    layers = {"host": {}, "gpu": {}}
    for e in events:
        category, layer = _category(_chain(e), layer_of_seq)
        times = {"host": e.self_cpu_time_total / 1e3, "gpu": e.self_device_time_total / 1e3 if on_cuda else 0.0}
        if layer is not None:
            for kind, ms in times.items():
                layers[kind].setdefault(layer, dict.fromkeys(CONV_PARTS, 0.0))[category] += ms
            category = f"conv {category}"
        host[category] = host.get(category, 0.0) + times["host"]
        gpu[category] = gpu.get(category, 0.0) + times["gpu"]
    # Top-level events of all threads: the device thread's backward runs while the caller waits
    # in an untraced call, so they do not overlap.
    traced = sum(e.cpu_time_total for e in events if e.cpu_parent is None) / 1e3
    host["Python and dispatch (untraced)"] = max(0.0, wall_ms - traced)
    map_builds = [e for e in events if e.name == KERNEL_MAP_RANGE
                  and not any(a.name == KERNEL_MAP_RANGE for a in _chain(e)[1:])]
    convs = {n: m for n, m in model.named_modules() if isinstance(m, SparseConv3d)}
    shapes = {n: f"k{m.kernel_size[0]}s{m.stride[0]}{'T' if m.transposed else ''} {m.in_channels}->{m.out_channels}"
              for n, m in convs.items()}

    def per_layer(rows: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, object]]:
        return {n: {"shape": shapes[n], **{k: round(v, 3) for k, v in rows.get(n, dict.fromkeys(CONV_PARTS, 0.0)).items()}}
                for n in convs}

    record: Dict[str, object] = {
        "step_ms": wall_ms, "categories_ms": dict(sorted(host.items(), key=lambda kv: -kv[1])),
        "layers_ms": per_layer(layers["host"]),
        "kernel_maps_ms": sum(e.cpu_time_total for e in map_builds) / 1e3, "kernel_map_builds": len(map_builds)}
    if on_cuda:
        record.update({
            "gpu_ms": sum(gpu.values()), "categories_gpu_ms": dict(sorted(gpu.items(), key=lambda kv: -kv[1])),
            "layers_gpu_ms": per_layer(layers["gpu"]),
            "kernel_maps_gpu_ms": gpu.get("kernel maps", 0.0),
            "kernel_launches": sum(_launches(e) for e in events),
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2 ** 20})
    return record


def count_host_syncs(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Host-device synchronisations during ``fn()`` on CUDA (the operations torch's sync debug
    mode warns about: ``.item()``, ``.cpu()``, ``nonzero``, blocking copies); None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum(1 for w in caught if SYNC_WARNING in str(w.message))


def print_breakdown(train: Dict[str, object], inference: Dict[str, object]) -> None:
    """The categories of both steps side by side, then per conv layer and pass (GPU time too on CUDA)."""
    steps = {"train": train, "inference": inference}
    print(f"\nwhere one profiled step goes: host ms (% of its wall time) for training ({train['step_ms']:.0f} ms) "
          f"and inference ({inference['step_ms']:.0f} ms)")
    on_gpu = "categories_gpu_ms" in train
    for name in train["categories_ms"]:
        cells = "".join(f"{r['categories_ms'].get(name, 0.0):>10.1f} ({100 * r['categories_ms'].get(name, 0.0) / r['step_ms']:4.1f} %)"
                        for r in steps.values())
        gpu = "".join(f"{r['categories_gpu_ms'].get(name, 0.0):>10.1f}" for r in steps.values()) if on_gpu else ""
        print(f"  {name:<34}{cells}{gpu}")
    if on_gpu:
        for kind, r in steps.items():
            print(f"  {kind}: GPU {r['gpu_ms']:.1f} ms in {r['kernel_launches']} kernel launches, kernel maps "
                  f"{r['kernel_maps_ms']:.1f} ms host / {r['kernel_maps_gpu_ms']:.1f} ms GPU ({r['kernel_map_builds']} "
                  f"builds), peak memory {r['peak_memory_mib']:.0f} MiB")
    tables = [("layers_ms", "host")] + ([("layers_gpu_ms", "GPU")] if on_gpu else [])
    for key, what in tables:
        print(f"\n  {'conv layer (' + what + ')':<28}{'shape':<20}" + "".join(f"{p + ' ms':>16}" for p in CONV_PARTS)
              + f"{'inference ms':>16}")
        for name, row in train[key].items():
            print(f"  {name:<28}{row['shape']:<20}" + "".join(f"{row.get(p, 0.0):>16.1f}" for p in CONV_PARTS)
                  + f"{inference[key][name].get('forward', 0.0):>16.1f}")
