"""A whole MinkUNet training step and inference pass on one scan, where the time goes, and spconv.

One training step is forward, cross-entropy, backward and an SGD step; inference is an eval-mode
forward without autograd. Every step starts from a new tensor, so kernel maps are built inside the
timed call as in training. ``--batch-size B`` collates B copies of the scan. Median and best of
``--repeats`` after warm-up. When spconv is importable the same architecture built from its modules
(:mod:`.spconv_baseline`) runs on the same voxels and labels, interleaved with ours in one run, and
the table gives spconv / pointsparse. At more than one thread spconv's CPU scatter races: the JSON
records how far two of its inference passes on the same input differ.

The breakdown (:mod:`pointsparse.breakdown`) profiles one more training step and inference pass:
host time, and on CUDA GPU time, per category and per conv layer and pass (forward, input
gradient, weight gradient; events of all threads, so the CUDA backward on autograd's device thread
counts), kernel launches, kernel-map time and peak memory; on CUDA the JSON also counts the host
syncs of one inference forward. Minor page faults and
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
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..breakdown import breakdown, count_host_syncs, print_breakdown
from ..memory import retain_freed_memory
from ..models import MODELS, build_model
from ..quantize import sparse_quantize
from ..tensor import SparseTensor
from ..timing import environment
from .common import check_device, write_json
from .spconv_baseline import SpconvMinkUNet, spconv_available, spconv_input

BLOCKS = {"minkunet18": (2, 2, 2, 2), "minkunet34": (2, 3, 4, 6)}


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
        device = torch.device(args.device)
        record["breakdown"] = {"train": breakdown(ours.model, lambda: ours.train_step(labels), device),
                               "inference": breakdown(ours.model, ours.infer, device)}
        record["host_syncs_per_forward"] = count_host_syncs(ours.infer, device)
        print_breakdown(**record["breakdown"])
    write_json(args.out, record)
    return 0
