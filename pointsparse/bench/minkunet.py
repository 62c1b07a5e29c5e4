"""A whole MinkUNet training step and inference pass on one scan, where the time goes, and spconv.

One training step is forward, cross-entropy, backward and an SGD step; inference is an eval-mode
forward without autograd. Every step starts from a new tensor, so kernel maps are built inside the
timed call as in training. ``--batch-size B`` collates B copies of the scan. Median and best of
``--repeats`` after warm-up. When spconv is importable the same architecture built from its modules
(:mod:`.spconv_baseline`) runs on the same voxels and labels, interleaved with ours in one run, and
the table gives spconv / pointsparse. At more than one thread spconv's CPU scatter races: the JSON
records how far two of its inference passes on the same input differ.

The breakdown comes from ``torch.profiler`` over one more training step: the self time of every
event, attributed by its ancestors to the kernel maps (the ``pointsparse::kernel_map`` range the
package places), to each conv layer's forward, input gradient or weight gradient (layer ranges
placed by forward hooks here; backward nodes matched to forward ops by sequence number), or to
batch norm, activation, concatenation, residual additions, loss, head, optimiser and other ops; the
step's wall time not covered by any event is Python and dispatch overhead. Minor page faults and
system time per step (``getrusage``) show what fresh allocations cost; by default freed memory
stays in the process for both engines (:func:`pointsparse.memory.retain_freed_memory`),
``--glibc-default-malloc`` measures them with malloc as it comes.
"""

import argparse
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from ..kmap import KERNEL_MAP_RANGE
from ..memory import retain_freed_memory
from ..models import MODELS, build_model
from ..nn import SparseConv3d
from ..nn.feature_ops import LINEAR_RANGE
from ..quantize import sparse_quantize
from ..tensor import SparseTensor
from .common import check_device, environment, write_json
from .spconv_baseline import SpconvMinkUNet, spconv_available, spconv_input

LAYER_PREFIX = "layer:"
BLOCKS = {"minkunet18": (2, 2, 2, 2), "minkunet34": (2, 3, 4, 6)}
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
CONV_PARTS = ("forward", "input grad", "weight grad")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scan", required=True, help="KITTI-format .bin scan (float32 x, y, z, remission)")
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--model", default="minkunet18", choices=sorted(MODELS))
    parser.add_argument("--cr", type=float, default=1.0, help="channel ratio (width multiplier)")
    parser.add_argument("--batch-size", type=int, default=1, help="copies of the scan collated into one batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (spconv's CPU package only on the CPU)")
    parser.add_argument("--no-spconv", action="store_true", help="skip the spconv baseline")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the profiled step")
    parser.add_argument("--glibc-default-malloc", action="store_true",
                        help="leave malloc as it is (by default freed memory stays in the process: "
                             "pointsparse.memory.retain_freed_memory, for both engines)")
    parser.add_argument("--out", default="bench_results/minkunet.json")


def load_batch(scan: str, voxel_size: float, batch_size: int, device: str) -> Tuple[Tensor, Tensor]:
    """int32 coords ``[B * N, 4]`` and float feats ``[B * N, 4]`` (x, y, z, remission) of B copies."""
    path = Path(scan)
    if not path.exists():
        raise SystemExit(f"scan {path} not found: pass --scan path/to/NNNNNN.bin")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    xyz, index = sparse_quantize(points[:, :3], voxel_size, return_index=True)
    xyz, feats = torch.as_tensor(xyz).int(), torch.as_tensor(points[index])
    coords = torch.cat([torch.cat([torch.full((xyz.shape[0], 1), b, dtype=torch.int32), xyz], 1)
                        for b in range(batch_size)])
    return coords.to(device), feats.repeat(batch_size, 1).to(device)


@dataclass
class Engine:
    """One network and how to feed it: ``make_input()`` builds a fresh input (no cached maps)."""
    name: str
    model: nn.Module
    make_input: Callable[[], object]
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)

    def train_step(self, labels: Tensor) -> float:
        self.model.train()
        loss = nn.functional.cross_entropy(self.model(self.make_input()), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def infer(self) -> Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(self.make_input())


def engines(args: argparse.Namespace, coords: Tensor, feats: Tensor) -> List[Engine]:
    torch.manual_seed(0)
    ours = build_model(args.model, cr=args.cr).to(args.device)
    out = [Engine("pointsparse", ours, lambda: SparseTensor(feats, coords))]
    if args.no_spconv or args.device != "cpu":
        return out
    if not spconv_available():
        print("spconv is not installed (pip install spconv): no baseline")
        return out
    if args.model not in BLOCKS:
        print(f"no spconv twin of {args.model}: no baseline")
        return out
    batch = int(coords[:, 0].max()) + 1
    theirs = SpconvMinkUNet(cr=args.cr, encoder_blocks=BLOCKS[args.model])
    out.append(Engine("spconv", theirs, lambda: spconv_input(coords, feats, batch)))
    return out


def _measure(fn: Callable[[], object]) -> Dict[str, float]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"s": wall, "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}


def _summary(samples: List[Dict[str, float]]) -> Dict[str, float]:
    walls = [s["s"] for s in samples]
    return {"median_s": statistics.median(walls), "best_s": min(walls),
            "sys_s": statistics.median(s["sys_s"] for s in samples),
            "minor_faults": statistics.median(s["minor_faults"] for s in samples)}


def time_engines(runs: List[Engine], labels: Tensor, repeats: int, warmup: int) -> Dict[str, Dict[str, object]]:
    """Median of ``repeats`` training steps and inference passes per engine, engines interleaved."""
    samples: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
    for _ in range(warmup):
        for e in runs:
            e.train_step(labels)
            e.infer()
    for _ in range(repeats):
        for e in runs:
            samples.setdefault((e.name, "train"), []).append(_measure(lambda: e.train_step(labels)))
            samples.setdefault((e.name, "inference"), []).append(_measure(e.infer))
    return {e.name: {kind: _summary(samples[(e.name, kind)]) for kind in ("train", "inference")} for e in runs}


# --- breakdown -------------------------------------------------------------------------------------

def _layer_ranges(model: nn.Module) -> List[object]:
    """Forward hooks that open a ``layer:NAME`` profiler range around every SparseConv3d."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, SparseConv3d):
            def pre(m, inputs, name=name):
                m._bench_range = record_function(LAYER_PREFIX + name)
                m._bench_range.__enter__()

            def post(m, inputs, output):
                m._bench_range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


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


def breakdown(model: nn.Module, step: Callable[[], object]) -> Dict[str, object]:
    """Where one profiled ``step()`` of ``model`` (ours) spends its time, in ms."""
    handles = _layer_ranges(model)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step()
            wall_ms = (time.perf_counter() - start) * 1e3
    finally:
        for h in handles:
            h.remove()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    main_thread = events[0].thread if events else 0
    events = [e for e in events if e.thread == main_thread]

    def chain(e) -> List[object]:
        out = []
        while e is not None:
            out.append(e)
            e = e.cpu_parent
        return out

    # Forward conv ops inside a layer range (or the head's): their sequence numbers name the
    # backward nodes.
    layer_of_seq: Dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and e.name.startswith("pointsparse::conv"):
            for a in chain(e)[1:]:
                if a.name.startswith(LAYER_PREFIX):
                    layer_of_seq[e.sequence_nr] = a.name[len(LAYER_PREFIX):]
                    break
                if a.name == LINEAR_RANGE:
                    layer_of_seq[e.sequence_nr] = LINEAR_RANGE
                    break
    categories: Dict[str, float] = {}
    layers: Dict[str, Dict[str, float]] = {}
    for e in events:
        ms = e.self_cpu_time_total / 1e3
        category, layer = _category(chain(e), layer_of_seq)
        if layer is not None:
            row = layers.setdefault(layer, dict.fromkeys(CONV_PARTS, 0.0))
            row[category] += ms
            category = f"conv {category}"
        categories[category] = categories.get(category, 0.0) + ms
    traced = sum(e.cpu_time_total for e in events if e.cpu_parent is None) / 1e3
    categories["Python and dispatch (untraced)"] = max(0.0, wall_ms - traced)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, SparseConv3d)}
    shapes = {n: f"k{m.kernel_size[0]}s{m.stride[0]}{'T' if m.transposed else ''} {m.in_channels}->{m.out_channels}"
              for n, m in convs.items()}
    return {"step_ms": wall_ms, "categories_ms": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
            "layers_ms": {n: {"shape": shapes[n], **{k: round(v, 3) for k, v in layers.get(n, {}).items()}}
                          for n in convs}}


def print_breakdown(train: Dict[str, object], inference: Dict[str, object]) -> None:
    steps = {"train": train, "inference": inference}
    print(f"\nwhere one profiled step goes: ms (% of its wall time) for training ({train['step_ms']:.0f} ms) "
          f"and inference ({inference['step_ms']:.0f} ms)")
    for name in train["categories_ms"]:
        cells = "".join(f"{r['categories_ms'].get(name, 0.0):>10.1f} ({100 * r['categories_ms'].get(name, 0.0) / r['step_ms']:4.1f} %)"
                        for r in steps.values())
        print(f"  {name:<34}{cells}")
    print(f"\n  {'conv layer':<28}{'shape':<20}" + "".join(f"{p + ' ms':>16}" for p in CONV_PARTS)
          + f"{'inference ms':>16}")
    for name, row in train["layers_ms"].items():
        print(f"  {name:<28}{row['shape']:<20}" + "".join(f"{row.get(p, 0.0):>16.1f}" for p in CONV_PARTS)
              + f"{inference['layers_ms'][name].get('forward', 0.0):>16.1f}")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    check_device(args.device)
    retained = False if args.glibc_default_malloc else retain_freed_memory()
    coords, feats = load_batch(args.scan, args.voxel_size, args.batch_size, args.device)
    labels = torch.randint(0, 19, (coords.shape[0],), generator=torch.Generator().manual_seed(0)).to(args.device)
    env = environment()
    print(f"{args.model} cr {args.cr} on {coords.shape[0]} voxels ({args.batch_size} x {args.scan} at "
          f"{args.voxel_size} m), {args.device}; {env['device']}, {torch.get_num_threads()} threads, "
          f"torch {env['torch']}; freed memory {'retained' if retained else 'returned to the system (glibc default)'}")
    runs = engines(args, coords, feats)
    timings = time_engines(runs, labels, args.repeats, args.warmup)
    header = f"{'engine':<14}{'train s':>10}{'best':>8}{'infer s':>10}{'best':>8}{'faults/step':>13}{'sys s':>8}"
    print(header + "\n" + "-" * len(header))
    for name, t in timings.items():
        tr, inf = t["train"], t["inference"]
        print(f"{name:<14}{tr['median_s']:>10.3f}{tr['best_s']:>8.3f}{inf['median_s']:>10.3f}{inf['best_s']:>8.3f}"
              f"{tr['minor_faults']:>13.0f}{tr['sys_s']:>8.3f}")
    record: Dict[str, object] = {"env": env, "model": args.model, "cr": args.cr, "scan": args.scan,
                                 "voxels": int(coords.shape[0]), "batch_size": args.batch_size,
                                 "device": args.device, "repeats": args.repeats, "retain_freed_memory": retained,
                                 "timings": timings}
    if "spconv" in timings:
        ratios = {kind: timings["spconv"][kind]["median_s"] / timings["pointsparse"][kind]["median_s"]
                  for kind in ("train", "inference")}
        record["spconv_over_pointsparse"] = ratios
        print(f"spconv / pointsparse: train {ratios['train']:.2f}x, inference {ratios['inference']:.2f}x")
        a, b = runs[1].infer(), runs[1].infer()
        record["spconv_inference_run_to_run_max_abs_diff"] = float((a - b).abs().max())
        print(f"spconv: two inference passes on the same input differ by up to {float((a - b).abs().max()):.3g} "
              f"(its CPU scatter races at {torch.get_num_threads()} threads)")
    if not args.no_breakdown:
        ours = runs[0]
        record["breakdown"] = {"train": breakdown(ours.model, lambda: ours.train_step(labels)),
                               "inference": breakdown(ours.model, ours.infer)}
        print_breakdown(**record["breakdown"])
    write_json(args.out, record)
    return 0
