"""Host time of a conv whose kernel map is cached: what the library adds around the op.

On a tiny tensor (the scan's first 64 voxels, 4 -> 4 channels), so the kernels cost next to nothing
and a call's wall time is its host time: ``functional.conv3d`` and ``nn.SparseConv3d`` against the
dataflow's run alone (the op call and its dispatch), per dataflow that runs on the device, under
``no_grad`` (inference) and with a weight that requires a gradient (the forward of a training step,
autograd graph included). Glue: conv3d less the dataflow's run. Minimum over rounds of the mean per
call, rounds interleaved; on CUDA each round ends with a synchronisation, and the GPU, given a few
microseconds of work per call, keeps up with the host.
"""

import argparse
import time
from typing import Callable, Dict

import torch

from .. import dataflows, functional as F
from ..config import ConvConfig
from ..nn import SparseConv3d
from ..tensor import SparseTensor, kernel_map
from ..timing import environment
from .common import add_scan_arguments, check_device, load_voxels, write_json

VOXELS, CHANNELS = 64, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "host", repeats=15)
    parser.add_argument("--calls", type=int, default=1000, help="calls per round")


def tiny_input(coords: torch.Tensor) -> SparseTensor:
    """The first VOXELS rows of ``coords`` with random CHANNELS features: kernels that cost next to
    nothing."""
    coords = coords[:VOXELS]
    return SparseTensor(torch.randn(coords.shape[0], CHANNELS, device=coords.device), coords)


def per_call_us(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls * 1e6


def host_times(x: SparseTensor, dataflow, rounds: int, calls: int) -> Dict[str, Dict[str, float]]:
    """{"no_grad" | "grad": {"conv3d_us", "module_us", "dataflow_us", "glue_us"}} for one dataflow."""
    device = x.feats.device
    config = ConvConfig(dataflow=dataflow)
    conv = SparseConv3d(CHANNELS, CHANNELS, 3, bias=False, config=config).to(device)
    spec = dataflows.resolve(dataflow, device, x.feats.dtype)
    kmap, centre = kernel_map(x, 3), F.identity_offset(3, 1, False)
    record = {}
    for mode in ("no_grad", "grad"):
        weight = conv.weight if mode == "grad" else conv.weight.detach()
        with torch.set_grad_enabled(mode == "grad"):
            calls_of = {"conv3d_us": lambda: F.conv3d(x, weight, kernel_size=3, config=config),
                        "module_us": lambda: conv(x),
                        "dataflow_us": lambda: spec.run(x.feats, weight, kmap, centre, config)}
            for fn in calls_of.values():
                fn()  # the map, its plans and the op's first-call work
            best = {name: float("inf") for name in calls_of}
            for _ in range(rounds):
                for name, fn in calls_of.items():
                    best[name] = min(best[name], per_call_us(fn, calls, device))
        best["glue_us"] = best["conv3d_us"] - best["dataflow_us"]
        record[mode] = best
    return record


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    torch.set_num_threads(args.threads)
    x = tiny_input(load_voxels(args.scan, args.voxel_size, args.device))
    env = environment()
    print(f"host time of a cached-map conv: {x.coords.shape[0]} voxels, {CHANNELS} -> {CHANNELS} channels, "
          f"k3; {env['device']}, {torch.get_num_threads()} threads, torch {env['torch']}")
    header = f"{'dataflow':<22}{'mode':<9}{'conv3d us':>11}{'module us':>11}{'dataflow us':>13}{'glue us':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for spec in dataflows.dataflows_for(x.feats.device, x.feats.dtype):
        record = host_times(x, spec.dataflow, args.repeats, args.calls)
        results[spec.dataflow.value] = record
        for mode, times in record.items():
            print(f"{spec.dataflow.value:<22}{mode:<9}{times['conv3d_us']:>11.1f}{times['module_us']:>11.1f}"
                  f"{times['dataflow_us']:>13.1f}{times['glue_us']:>9.1f}")
    write_json(args.out, {"benchmark": "host", "voxels": x.coords.shape[0], "channels": CHANNELS,
                          "rounds": args.repeats, "calls": args.calls, "environment": env, "results": results})
    return 0
