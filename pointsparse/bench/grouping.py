"""Grouping strategies of the gather-GEMM-scatter dataflow on MinkUNet-shaped layers of real scans.

For each scan: the voxels at tensor strides 1, 2, 4, 8 with MinkUNet widths 32, 64, 128, 256 run a
submanifold k3 layer (C -> C), and strides 1, 2, 4 a k2 s2 downsampling layer (C -> 2C). Per layer and
strategy: the spread of the pair counts ``n_k``, useful and computed MACs (redundancy), GEMM calls,
forward and forward+backward median ms, and the ratio ``SEPARATE ms / strategy ms`` measured in the
same run on the same input (> 1: faster than one GEMM per offset). The fused CPU dataflow is timed
on the same layers for reference.
"""

import argparse
import statistics
from typing import Dict, List

import torch

from .. import functional as F
from ..config import ConvConfig, Dataflow
from ..dataflows import runs_on
from ..dataflows.ggs import grouping_plan
from ..grouping import ConvGrouping, Grouping, GroupingConfig, symmetric_order
from ..tensor import SparseTensor, kernel_map
from ..timing import environment, time_ms
from .common import add_scan_arguments, check_device, load_voxels, ratios_against, write_json

WIDTHS = {1: 32, 2: 64, 4: 128, 8: 256}  # tensor stride: MinkUNet channels there


def strategies(volume: int) -> Dict[str, GroupingConfig]:
    order = symmetric_order(volume)
    return {
        "separate": GroupingConfig(),
        "symmetric": GroupingConfig(Grouping.SYMMETRIC),
        "fixed (quads)": GroupingConfig(Grouping.FIXED, groups=[order[i:i + 4] for i in range(0, volume, 4)]),
        "dense": GroupingConfig(Grouping.DENSE),
        "adaptive": GroupingConfig(Grouping.ADAPTIVE),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "grouping", repeats=5, many_scans=True)


def layers(coords: torch.Tensor):
    """(name, input tensor at its stride, kernel, stride, C_in, C_out) of the MinkUNet-shaped layers."""
    gen = torch.Generator().manual_seed(0)
    fine = SparseTensor(torch.zeros(coords.shape[0], 0, device=coords.device), coords)
    at_stride = {1: fine}
    for t in (1, 2, 4):
        down = kernel_map(at_stride[t], 2, 2)
        at_stride[2 * t] = SparseTensor(torch.zeros(down.num_out, 0, device=coords.device), down.out_coords,
                                        2 * t, fine.cache)
    for t, c in WIDTHS.items():
        feats = torch.randn(at_stride[t].coords.shape[0], c, generator=gen).to(coords.device)
        x = at_stride[t].with_feats(feats)
        yield f"subm k3 s{t} {c}->{c}", x, 3, 1, c, c
        if t < 8:
            yield f"down k2s2 s{t} {c}->{2 * c}", x, 2, 2, c, 2 * c


def run_layer(x: SparseTensor, kernel: int, stride: int, c_in: int, c_out: int, repeats: int) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(1)
    volume = kernel ** 3
    weight = (torch.randn(volume, c_in, c_out, generator=gen) / (c_in * volume) ** 0.5).to(x.feats.device)
    kmap = kernel_map(x, kernel, stride)
    identity = volume // 2 if stride == 1 else -1
    counts = [n for k, n in enumerate(kmap.pair_counts.tolist()) if k != identity and n > 0]
    grad = torch.randn(kmap.num_out, c_out, generator=gen).to(x.feats.device)
    feats = x.feats.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    rows: Dict[str, object] = {"voxels_in": x.coords.shape[0], "voxels_out": kmap.num_out,
                               "n_k": {"min": min(counts), "median": statistics.median(counts), "max": max(counts),
                                       "offsets": len(counts)}}

    def timings(config: ConvConfig) -> Dict[str, object]:
        def forward():
            with torch.no_grad():
                return F.conv3d(x, weight, kernel_size=kernel, stride=stride, config=config)

        def forward_backward():
            y = F.conv3d(x.with_feats(feats), w, kernel_size=kernel, stride=stride, config=config)
            y.feats.backward(grad)

        return {"forward": time_ms(forward, repeats), "forward_backward": time_ms(forward_backward, repeats)}

    for name, grouping in strategies(volume).items():
        plan = grouping_plan(kmap, grouping, identity)
        record = {"useful_macs": plan.useful_macs(c_in, c_out), "computed_macs": plan.computed_macs(c_in, c_out),
                  "redundancy": plan.redundancy, "gemm_calls": plan.gemm_calls, "groups": len(plan.groups)}
        record.update(timings(ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER, grouping=ConvGrouping.of(grouping))))
        rows[name] = record
    if runs_on(Dataflow.FUSED, x.feats.device):
        rows["fused dataflow"] = timings(ConvConfig(dataflow=Dataflow.FUSED))
    separate = rows["separate"]
    for name, record in rows.items():
        if isinstance(record, dict) and "forward" in record:
            record["ratio_vs_separate"] = ratios_against(separate, record)
    return rows


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    check_device(args.device)
    env = environment()
    print(f"grouping strategies on {args.device}; {env['device']}, {torch.get_num_threads()} threads, "
          f"torch {env['torch']}")
    header = (f"{'layer':<24}{'strategy':<16}{'n_k min/med/max':>18}{'GEMMs':>7}{'redund.':>9}"
              f"{'fwd ms':>9}{'f+b ms':>9}{'fwd x':>7}{'f+b x':>7}")
    results: List[Dict[str, object]] = []
    for scan in args.scan:
        coords = load_voxels(scan, args.voxel_size, args.device)
        print(f"\n{scan}: {coords.shape[0]} voxels at {args.voxel_size} m")
        print(header)
        print("-" * len(header))
        for name, x, kernel, stride, c_in, c_out in layers(coords):
            rows = run_layer(x, kernel, stride, c_in, c_out, args.repeats)
            spread = rows["n_k"]
            for strategy, record in rows.items():
                if not isinstance(record, dict) or "forward" not in record:
                    continue
                ratio = record["ratio_vs_separate"]
                calls = record.get("gemm_calls", "-")
                redundancy = f"{100 * record['redundancy']:.1f}%" if "redundancy" in record else "-"
                nk = f"{spread['min']}/{spread['median']:.0f}/{spread['max']}" if strategy == "separate" else ""
                print(f"{name if strategy == 'separate' else '':<24}{strategy:<16}{nk:>18}{calls:>7}{redundancy:>9}"
                      f"{record['forward']['median_ms']:>9.2f}{record['forward_backward']['median_ms']:>9.2f}"
                      f"{ratio['forward']:>6.2f}x{ratio['forward_backward']:>6.2f}x")
            results.append({"scan": scan, "layer": name, **rows})
    write_json(args.out, {"benchmark": "grouping", "voxel_size": args.voxel_size, "conv_device": args.device,
                          **env, "results": results})
    return 0
