"""Implicit GEMM on MinkUNet-shaped layers of real scans: redundant work by tile size, reordering and
mask splits, and its time against the fused and gather-GEMM-scatter dataflows.

Layers as in the grouping suite (submanifold k3 at tensor strides 1/2/4/8 with 32/64/128/256
channels, k2 s2 downsampling from strides 1/2/4) plus k3 s2 downsampling from strides 1/2/4. For
each layer: the redundancy (computed MACs on absent neighbours over all computed MACs, exact, from
the reordering) for tiles of 16/32/64/128 rows, unsorted and sorted, 1 to 4 splits; then forward
and forward+backward median ms of IMPLICIT_GEMM (unsorted, and sorted with 2 splits, tiles of 32)
and of the FUSED (CPU) and GATHER_GEMM_SCATTER dataflows, with ratios against IMPLICIT_GEMM sorted
measured in the same run. On CUDA (sm_80+) ``--dtype float16`` / ``bfloat16``, and float32 with
``--tf32``, time the tensor-core kernel, float32 without it the FP32 FMA tiles; the CPU runs float32.
"""

import argparse
from typing import Dict, List

import torch

from .. import functional as F
from ..config import ConvConfig, Dataflow
from ..dataflows import runs_on
from ..implicit import ImplicitGemmConfig, implicit_gemm_work
from ..tensor import SparseTensor, kernel_map
from ..timing import environment, time_ms
from .common import add_scan_arguments, check_device, load_voxels, ratios_against, write_json
from .grouping import layers as grouping_layers

TILES = (16, 32, 64, 128)
SPLITS = (1, 2, 3, 4)
TIMED = {
    "implicit unsorted": ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(32, False, 1)),
    "implicit sorted split 2": ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(32, True, 2)),
    "fused": ConvConfig(dataflow=Dataflow.FUSED),
    "gather-GEMM-scatter": ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER),
}
REFERENCE = "implicit sorted split 2"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "implicit", repeats=5, many_scans=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="features and weights of the timed layers (float16 / bfloat16: CUDA)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 for float32 on CUDA (torch.backends.cuda.matmul.allow_tf32), as cuBLAS")


def layers(coords: torch.Tensor):
    """The grouping suite's layers, and k3 s2 downsampling next to each k2 s2 one."""
    for name, x, kernel, stride, c_in, c_out in grouping_layers(coords):
        yield name, x, kernel, stride, c_in, c_out
        if stride == 2:
            yield name.replace("k2s2", "k3s2"), x, 3, 2, c_in, c_out


def redundancy_table(x: SparseTensor, kernel: int, stride: int) -> Dict[str, float]:
    neighbors = kernel_map(x, kernel, stride).neighbors
    table = {}
    for tile in TILES:
        for reorder in (False, True):
            for splits in SPLITS:
                work = implicit_gemm_work(neighbors, ImplicitGemmConfig(tile, reorder, splits))
                table[f"tile {tile} {'sorted' if reorder else 'unsorted'} split {splits}"] = work.redundancy
    return table


def timings(x: SparseTensor, kernel: int, stride: int, c_in: int, c_out: int, repeats: int,
            dtype: torch.dtype = torch.float32) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(1)
    device = x.feats.device
    x = x.with_feats(x.feats.to(dtype))
    weight = (torch.randn(kernel ** 3, c_in, c_out, generator=gen) / (c_in * kernel ** 3) ** 0.5).to(device, dtype)
    grad = torch.randn(kernel_map(x, kernel, stride).num_out, c_out, generator=gen).to(device, dtype)
    feats = x.feats.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    rows: Dict[str, object] = {}
    for name, config in TIMED.items():
        if not runs_on(config.dataflow, device, dtype):
            continue

        def forward(config=config):
            with torch.no_grad():
                return F.conv3d(x, weight, kernel_size=kernel, stride=stride, config=config)

        def forward_backward(config=config):
            F.conv3d(x.with_feats(feats), w, kernel_size=kernel, stride=stride, config=config).feats.backward(grad)

        rows[name] = {"forward": time_ms(forward, repeats), "forward_backward": time_ms(forward_backward, repeats)}
    reference = rows[REFERENCE]
    for record in rows.values():
        record["ratio_vs_implicit_sorted"] = ratios_against(reference, record)
    return rows


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    check_device(args.device)
    dtype = DTYPES[args.dtype]
    if dtype != torch.float32 and args.device == "cpu":
        raise SystemExit(f"--dtype {args.dtype} is for CUDA; the CPU dataflows run float32 and float64")
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32 or allowed
    try:
        return _run(args, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def _run(args: argparse.Namespace, dtype: torch.dtype) -> int:
    """The suite, with TF32 set as asked (``run`` restores torch's setting afterwards)."""
    env = environment()
    print(f"implicit GEMM on {args.device} in {args.dtype}{' (TF32 allowed)' if args.tf32 else ''}; {env['device']}, "
          f"{torch.get_num_threads()} threads, torch {env['torch']}")
    results: List[Dict[str, object]] = []
    summaries: List[Dict[str, object]] = []
    for scan in args.scan:
        coords = load_voxels(scan, args.voxel_size, args.device)
        print(f"\n{scan}: {coords.shape[0]} voxels at {args.voxel_size} m")
        header = f"{'layer':<24}" + "".join(f"{'t' + str(t) + ' uns/s1 s2 s3 s4':>30}" for t in TILES)
        print("redundancy % (tile rows: unsorted split 1 / sorted split 1..4)")
        print(header)
        for name, x, kernel, stride, c_in, c_out in layers(coords):
            table = redundancy_table(x, kernel, stride)
            cells = []
            for tile in TILES:
                values = [table[f"tile {tile} unsorted split 1"]] + [
                    table[f"tile {tile} sorted split {s}"] for s in SPLITS]
                cells.append("/".join(f"{100 * v:.0f}" for v in values))
            print(f"{name:<24}" + "".join(f"{c:>30}" for c in cells))
            results.append({"scan": scan, "layer": name, "redundancy": table,
                            "timings": timings(x, kernel, stride, c_in, c_out, args.repeats, dtype)})
        scan_records = [r for r in results if r["scan"] == scan]
        print_timings("layer", [(r["layer"], r["timings"]) for r in scan_records], f"x: {REFERENCE} ms / ms")
        totals = layer_totals(scan_records)
        summaries.append({"scan": scan, "totals": totals})
        print_timings("all layers", [("", totals)], "sums over the layers: what decides the default")
    write_json(args.out, {"benchmark": "implicit", "voxel_size": args.voxel_size, "conv_device": args.device,
                          "dtype": args.dtype, "tf32": args.tf32, **env, "results": results,
                          "summary": summaries})
    return 0


def print_timings(first_column: str, groups, note: str) -> None:
    """A table of (label, {dataflow: timings with ratio_vs_implicit_sorted}) groups, the label on
    each group's first row."""
    print(f"\n{first_column:<24}{'dataflow':<26}{'fwd ms':>9}{'f+b ms':>9}{'fwd x':>8}{'f+b x':>8}   ({note})")
    for label, rows in groups:
        for i, (name, row) in enumerate(rows.items()):
            ratio = row["ratio_vs_implicit_sorted"]
            print(f"{label if i == 0 else '':<24}{name:<26}{row['forward']['median_ms']:>9.2f}"
                  f"{row['forward_backward']['median_ms']:>9.2f}{ratio['forward']:>7.2f}x"
                  f"{ratio['forward_backward']:>7.2f}x")


def layer_totals(records: List[Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Per dataflow, its median ms summed over the layers of ``records`` (one scan), with ratios of
    those sums against IMPLICIT_GEMM sorted: a whole network's share of each layer kind, roughly."""
    totals: Dict[str, Dict[str, object]] = {}
    for record in records:
        for name, row in record["timings"].items():
            total = totals.setdefault(name, {part: {"median_ms": 0.0} for part in ("forward", "forward_backward")})
            for part in ("forward", "forward_backward"):
                total[part]["median_ms"] += row[part]["median_ms"]
    for total in totals.values():
        total["ratio_vs_implicit_sorted"] = ratios_against(totals[REFERENCE], total)
    return totals
