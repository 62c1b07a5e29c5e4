"""Convolution times on one voxelised scan against spconv's CPU package and a naive torch conv.

Cases: submanifold 3x3x3 32->32 with the kernel map built inside the timed call and with it cached,
64->64 cached, strided k2 s2 32->64 with the map built, and forward+backward 32->32 cached. spconv
(``pip install spconv``) runs its Native gather-GEMM-scatter; its CPU backward needs
``spconv.pytorch.ops.get_current_stream`` replaced by ``lambda: 0``, which this benchmark does.
pointsparse runs its default dataflow (fused kernels on the CPU, the implicit GEMM on CUDA), then
every explicit dataflow that runs on the device ("ggs" in the table is gather-GEMM-scatter, ATen GEMMs).
``--device cuda`` times them on the GPU against the naive torch conv on the same GPU. Each row also reports how many output rows differ from
ours (spconv's CPU scatter races at more than one thread), and GEMM efficiency: useful FLOP/s
against ``torch.mm`` on the same FLOPs.
"""

import argparse
from dataclasses import replace
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import functional as F
from ..config import ConvConfig, Dataflow, KernelMapAlgo
from ..convert import from_pointsparse_weight
from ..dataflows import dataflows_for
from ..kmap import build_kernel_map
from ..tensor import SparseTensor
from ..timing import environment, time_ms
from .common import add_scan_arguments, check_device, load_voxels, write_json
from .kmap import naive_neighbors
from .spconv_baseline import import_spconv, spconv_available, spconv_input

HASH, SORT = ConvConfig(kmap=KernelMapAlgo.HASH), ConvConfig(kmap=KernelMapAlgo.SORT)
CASES = {  # name: (kernel, stride, C_in, C_out, map cached, backward, config)
    "subm3 32->32 map built hash": (3, 1, 32, 32, False, False, HASH),
    "subm3 32->32 map built sort": (3, 1, 32, 32, False, False, SORT),
    "subm3 32->32 cached": (3, 1, 32, 32, True, False, HASH),
    "subm3 64->64 cached": (3, 1, 64, 64, True, False, HASH),
    "k2s2 32->64 map built hash": (2, 2, 32, 64, False, False, HASH),
    "k2s2 32->64 map built sort": (2, 2, 32, 64, False, False, SORT),
    "subm3 32->32 fwd+bwd cached": (3, 1, 32, 32, True, True, HASH),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "conv", repeats=10,
                       device_help="cpu or cuda; on CUDA every dataflow that runs there is timed against the "
                            "naive torch conv on the same device (spconv's CPU package only on the CPU)")


def naive_conv(coords: Tensor, feats: Tensor, weight: Tensor, kernel: int, stride: int,
               table: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """Pure torch: searchsorted kernel map (unless given), then index_select / mm / index_add_ per offset."""
    out_coords, neighbors = table if table is not None else naive_neighbors(coords, kernel, stride)
    out = feats.new_zeros((out_coords.shape[0], weight.shape[2]))
    for k in range(weight.shape[0]):
        rows = (neighbors[:, k] >= 0).nonzero().squeeze(1)
        out.index_add_(0, rows, feats.index_select(0, neighbors[rows, k].long()) @ weight[k])
    return out


def spconv_layer(kernel: int, stride: int, c_in: int, c_out: int, weight: Tensor):
    spconv = import_spconv()
    if stride == 1:
        layer = spconv.SubMConv3d(c_in, c_out, kernel, bias=False, indice_key="bench", algo=spconv.ConvAlgo.Native)
    else:
        layer = spconv.SparseConv3d(c_in, c_out, kernel, stride, bias=False, algo=spconv.ConvAlgo.Native)
    layer.weight.data = from_pointsparse_weight(weight, "spconv", (kernel,) * 3)  # [C_out, kx, ky, kz, C_in]
    return layer


def rows_differing(ours: SparseTensor, theirs_feats: Tensor, theirs_coords: Tensor, stride: int) -> Dict[str, int]:
    """Rows at coordinates both produce whose features differ (relative 1e-3), and rows only we have."""
    def keys(coords: Tensor) -> Tensor:
        c = coords.long()  # [N, 3] spatial; a constant shift keeps the order
        return (c[:, 0] * 65536 + c[:, 1]) * 65536 + c[:, 2]

    mine_keys, theirs_keys = keys(ours.coords[:, 1:] // stride), keys(theirs_coords)
    shift = mine_keys.min() - theirs_keys.min() if stride == 1 else None
    if shift is None:  # spconv's stride-2 indices are ours // 2 after an even shift: align by offset
        shift = keys(ours.coords[:, 1:].min(0).values[None] // stride)[0] - keys(theirs_coords.min(0).values[None])[0]
    theirs_keys = theirs_keys + shift
    order = torch.argsort(theirs_keys)
    pos = torch.searchsorted(theirs_keys[order], mine_keys).clamp(max=theirs_keys.numel() - 1)
    found = theirs_keys[order][pos] == mine_keys
    theirs = theirs_feats[order][pos[found]]
    scale = ours.feats.abs().max()
    bad = int(((ours.feats[found] - theirs).abs().max(1).values > 1e-3 * scale).sum())
    return {"rows_differing_from_pointsparse": bad, "rows_missing_vs_pointsparse": int((~found).sum())}


def run_case(coords: Tensor, kernel: int, stride: int, c_in: int, c_out: int, cached: bool,
             backward: bool, config: ConvConfig, repeats: int) -> Dict[str, object]:
    device = coords.device
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(coords.shape[0], c_in, generator=gen).to(device)
    weight = (torch.randn(kernel ** 3, c_in, c_out, generator=gen) / (c_in * kernel ** 3) ** 0.5).to(device)
    grad = torch.randn(coords.shape[0] if stride == 1 else 1, c_out, generator=gen).to(device)
    base = SparseTensor(feats, coords)
    fresh = lambda: SparseTensor(feats, coords)  # noqa: E731  (a new tensor: no cached map)
    ours_w = weight.clone().requires_grad_(backward)
    ours_x = base.with_feats(feats.clone().requires_grad_(backward))

    def ours(dataflow: Dataflow = config.dataflow) -> SparseTensor:
        y = F.conv3d(ours_x if cached else fresh(), ours_w, kernel_size=kernel, stride=stride,
                     config=replace(config, dataflow=dataflow))
        if backward:
            y.feats.backward(grad)
        return y

    mine = ours()
    rows: Dict[str, object] = {"pointsparse": time_ms(ours, repeats)}
    for dataflow in _dataflows_on(device):
        rows[f"pointsparse {dataflow.value}"] = time_ms(lambda: ours(dataflow), repeats)

    table = naive_neighbors(coords, kernel, stride) if cached else None
    naive_w = weight.clone().requires_grad_(backward)
    naive_f = feats.clone().requires_grad_(backward)

    def naive() -> Tensor:
        out = naive_conv(coords, naive_f, naive_w, kernel, stride, table)
        if backward:
            out.backward(grad)
        return out

    rows["naive torch"] = time_ms(naive, max(3, repeats // 3))
    rows["spconv (CPU)"] = _time_spconv(coords, feats, weight, kernel, stride, c_in, c_out, cached,
                                        backward, grad, repeats, mine) if device.type == "cpu" else \
        {"skipped": f"spconv's CPU package does not run on {device}"}
    useful_flops = 2 * int(build_kernel_map(coords, (1, 1, 1), kernel, stride).in_idx.numel()) * c_in * c_out
    a = torch.randn(useful_flops // (2 * c_in * c_out), c_in, device=device)
    mm = time_ms(lambda: a @ weight[0], repeats)
    ours_ms = rows["pointsparse"]["median_ms"]
    rows["gemm_efficiency"] = {"useful_gflops": useful_flops / 1e9,
                               "pointsparse_gflop_per_s": useful_flops / ours_ms / 1e6,
                               "torch_mm_gflop_per_s": useful_flops / mm["median_ms"] / 1e6}
    if backward:
        rows["gemm_efficiency"]["note"] = "forward FLOPs only; backward runs about twice more"
    return rows


def _dataflows_on(device: torch.device):
    """Every explicit dataflow that runs on ``device``."""
    return [spec.dataflow for spec in dataflows_for(device)]


def _time_spconv(coords, feats, weight, kernel, stride, c_in, c_out, cached, backward, grad, repeats,
                 mine) -> Dict[str, object]:
    if not spconv_available():
        return {"skipped": "spconv not installed (pip install spconv)"}
    layer = spconv_layer(kernel, stride, c_in, c_out, weight)
    layer.weight.requires_grad_(backward)
    warm = layer(spconv_input(coords, feats.clone()))  # indice_dict of warm holds the subm map
    source = feats.clone().requires_grad_(backward)

    def theirs():
        x = warm.replace_feature(source) if cached else spconv_input(coords, source)
        y = layer(x)
        if backward:
            y.features.backward(grad)
        return y

    timing: Dict[str, object] = dict(time_ms(theirs, repeats))
    out = theirs()
    timing.update(rows_differing(mine, out.features.detach(), out.indices[:, 1:], stride))
    timing["rows"] = int(out.features.shape[0])
    return timing


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    check_device(args.device)
    coords = load_voxels(args.scan, args.voxel_size, args.device)
    env = environment()
    print(f"{coords.shape[0]} voxels at {args.voxel_size} m from {args.scan} on {args.device}; {env['device']}, "
          f"{torch.get_num_threads()} threads, torch {env['torch']}")
    header = (f"{'case':<30}{'pointsparse ms':>15}{'ggs ms':>8}{'spconv ms':>11}{'naive ms':>10}"
              f"{'spconv/ours':>13}{'naive/ours':>12}{'GEMM eff':>10}{'spconv bad rows':>17}")
    print(header)
    print("-" * len(header))
    results = {}
    for name, (kernel, stride, c_in, c_out, cached, backward, config) in CASES.items():
        rows = run_case(coords, kernel, stride, c_in, c_out, cached, backward, config, args.repeats)
        ours = rows["pointsparse"]["median_ms"]
        theirs = rows["spconv (CPU)"].get("median_ms", float("nan"))
        naive = rows["naive torch"]["median_ms"]
        ggs = rows[f"pointsparse {Dataflow.GATHER_GEMM_SCATTER.value}"]["median_ms"]
        eff = rows["gemm_efficiency"]
        bad = rows["spconv (CPU)"].get("rows_differing_from_pointsparse", "-")
        print(f"{name:<30}{ours:>15.2f}{ggs:>8.2f}{theirs:>11.2f}{naive:>10.2f}{theirs / ours:>12.2f}x"
              f"{naive / ours:>11.2f}x{eff['pointsparse_gflop_per_s'] / eff['torch_mm_gflop_per_s']:>10.2f}"
              f"{bad:>17}")
        results[name] = rows
    write_json(args.out, {"benchmark": "conv", "scan": args.scan, "voxel_size": args.voxel_size,
                          "conv_device": args.device, **env,
                          "results": results})
    return 0
