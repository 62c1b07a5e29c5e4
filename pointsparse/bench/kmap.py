"""Kernel-map build times: hash and sort against a naive torch searchsorted reference.

Cases on one voxelised scan: the submanifold 3x3x3 map and the strided k2 s2 map (output
coordinates included). For each algorithm: the neighbour table alone by the general build (K
lookups per output), the KernelMap (its table: what the implicit GEMM on CUDA runs), the same for
coordinates checked before (a later map of the family: no value checks), and the KernelMap with its
CSR pairs (what gather-GEMM-scatter and FUSED run; built on first use, as the bitmask). k2 s2 tiles
its stride, so its KernelMap rows run the tiling map (one hash lookup per input after the
algorithm's downsampling), also timed on its own.
"""

import argparse
from typing import Dict, Tuple

import torch
from torch import Tensor

from .. import ops
from ..config import ConvConfig, KernelMapAlgo
from ..kmap import build_kernel_map, build_neighbors, downsample_coords
from ..offsets import kernel_offsets
from ..timing import environment, time_ms
from .common import add_scan_arguments, load_voxels, write_json

CASES = {"subm_k3": (3, 1), "strided_k2_s2": (2, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "kmap", repeats=20)


def naive_neighbors(coords: Tensor, kernel_size: int, stride: int) -> Tuple[Tensor, Tensor]:
    """Pure-torch baseline: unique for the coarse coordinates, searchsorted per offset."""
    def keys_of(c: Tensor) -> Tensor:
        c = c.long() + torch.tensor([0, 1 << 17, 1 << 17, 1 << 17], device=c.device)
        return ((c[:, 0] << 54) | (c[:, 1] << 36) | (c[:, 2] << 18) | c[:, 3])

    out = coords
    if stride > 1:
        floored = torch.cat([coords[:, :1], torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride], 1)
        out = torch.unique(floored, dim=0)
    sorted_keys, order = torch.sort(keys_of(coords))
    columns = []
    for offset in kernel_offsets(kernel_size).to(coords.device):
        query = keys_of(out + torch.cat([offset.new_zeros(1), offset]))
        pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
        found = sorted_keys[pos] == query
        columns.append(torch.where(found, order[pos].int(), -1))
    return out, torch.stack(columns, 1)


def ours_neighbors(coords: Tensor, kernel_size: int, stride: int, algo: KernelMapAlgo) -> Tensor:
    out = coords if stride == 1 else downsample_coords(coords, (stride,) * 3, algo)
    offsets = kernel_offsets(kernel_size).to(coords.device)
    return build_neighbors(coords, out, offsets, stride == 1 and kernel_size % 2 == 1, algo)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    coords = load_voxels(args.scan, args.voxel_size, args.device)
    env = environment()
    print(f"{coords.shape[0]} voxels at {args.voxel_size} m from {args.scan}; "
          f"{env['device']}, {torch.get_num_threads()} threads, torch {env['torch']}")
    results: Dict[str, Dict[str, object]] = {}
    header = f"{'case':<16}{'variant':<40}{'median ms':>11}{'best ms':>10}{'naive / this':>14}"
    print(header)
    print("-" * len(header))
    for case, (kernel_size, stride) in CASES.items():
        naive_out, naive_table = naive_neighbors(coords, kernel_size, stride)
        naive = time_ms(lambda: naive_neighbors(coords, kernel_size, stride), args.repeats)
        rows = {"naive torch (searchsorted)": naive}
        for algo in KernelMapAlgo:
            table = ours_neighbors(coords, kernel_size, stride, algo)
            # Same map as the baseline, up to the order of the coarse coordinates.
            assert table.shape == naive_table.shape and int((table >= 0).sum()) == int((naive_table >= 0).sum())
            config = ConvConfig(kmap=algo)
            rows[f"{algo.value}: neighbors"] = time_ms(
                lambda: ours_neighbors(coords, kernel_size, stride, algo), args.repeats)
            rows[f"{algo.value}: KernelMap"] = time_ms(
                lambda: build_kernel_map(coords, (1, 1, 1), kernel_size, stride, config=config), args.repeats)
            rows[f"{algo.value}: KernelMap, checked"] = time_ms(
                lambda: build_kernel_map(coords, (1, 1, 1), kernel_size, stride, config=config, checked=True),
                args.repeats)
            rows[f"{algo.value}: KernelMap + CSR"] = time_ms(
                lambda: build_kernel_map(coords, (1, 1, 1), kernel_size, stride, config=config).pairs, args.repeats)
        if stride > 1 and kernel_size == stride and kernel_size % 2 == 0:
            # What the KernelMap rows run for this case: the tiling map, one lookup per input.
            rows["tiling: neighbors (incl. output coords)"] = time_ms(
                lambda: ops.kmap_tiling(coords, downsample_coords(coords, (stride,) * 3, KernelMapAlgo.SORT),
                                        (kernel_size,) * 3, (1, 1, 1)), args.repeats)
        for name, timing in rows.items():
            timing["speedup_vs_naive"] = naive["median_ms"] / timing["median_ms"]
            print(f"{case:<16}{name:<40}{timing['median_ms']:>11.2f}{timing['best_ms']:>10.2f}"
                  f"{timing['speedup_vs_naive']:>13.1f}x")
        results[case] = {"num_in": coords.shape[0], "num_out": int(naive_out.shape[0]), **rows}
    write_json(args.out, {"benchmark": "kmap", "scan": args.scan, "voxel_size": args.voxel_size,
                          **env, "results": results})
    return 0
