"""Every registered op called with valid arguments, then with one argument at a time replaced by a
wrong one: another dtype, rank or row count, empty, transposed, indices out of range, negative or
huge ints, bad int lists. Each call must return or raise a Python exception of the kinds the ops
use; none may crash the interpreter. Run as a script (tests/test_op_mutations.py starts it in a
subprocess), it writes each call to --log before making it, so a crash names its call.

    python tests/op_mutations.py --device cpu --log FILE [--host-checked-only]

``--host-checked-only`` (for CUDA) keeps to what the ops check on the host on every device:
dtypes, ranks, devices. Row counts, int arguments and index values are left out: CUDA kernels
assert indices on the device, and a failed device assertion poisons the CUDA context for the rest
of the process.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).parent))

import pointsparse as ps  # noqa: E402
from pointsparse import ConvGrouping, Grouping, GroupingConfig, ImplicitGemmConfig, kernel_offsets, ops  # noqa: E402
from pointsparse.dataflows.ggs import _encoded_plans  # noqa: E402
from pointsparse.dataflows.implicit import reordering as reordering_of  # noqa: E402

from helpers import random_tensor  # noqa: E402

EXPECTED = (ValueError, TypeError, RuntimeError, IndexError, OverflowError)


def valid_calls(device: str) -> Dict[str, Tuple]:
    """Arguments of a valid call of every op (a map of 3^3 offsets over a small random tensor)."""
    x = random_tensor(num_points=60, channels=4, span=6, seed=1, dtype=torch.float32, device=device)
    kmap = ps.kernel_map(x, 3)
    identity = 13
    implicit = ImplicitGemmConfig(8, True, 2)
    forward, backward = reordering_of(kmap, implicit), reordering_of(kmap, implicit, transposed=True)
    grouping = ConvGrouping(GroupingConfig(Grouping.DENSE), GroupingConfig(Grouping.SYMMETRIC),
                            GroupingConfig(Grouping.ADAPTIVE))
    plans = _encoded_plans(kmap, grouping, identity)
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(27, 4, 5, generator=gen).to(device)
    grad = torch.randn(kmap.num_out, 5, generator=gen).to(device)
    coords, feats = x.coords, x.feats
    cells = ops.downsample_tiling(coords, [2, 2, 2], [1, 1, 1])[0]
    table, cell_table = ops.coords_hash_table(coords), ops.coords_hash_table(cells)
    pairs = (kmap.offset_ptr, kmap.in_idx, kmap.out_idx)
    mean, var = feats.mean(0), feats.var(0, unbiased=False)
    ones, zeros = torch.ones(4, device=device), torch.zeros(4, device=device)
    calls = {
        "pack_coords": (coords,),
        "downsample_coords_hash": (coords, [2, 2, 2]),
        "downsample_coords_sort": (coords, [2, 2, 2]),
        "build_kmap_hash": (coords, coords, kernel_offsets(3).to(device), True),
        "build_kmap_sort": (coords, coords, kernel_offsets(3).to(device), True),
        "kmap_tiling": (coords, cells, [2, 2, 2], [1, 1, 1]),
        "downsample_tiling": (coords, [2, 2, 2], [1, 1, 1]),
        "coords_hash_table": (coords,),
        # the library's checked calls: values trusted, so a wrong one must still never crash
        "coords_hash_table@checked": (coords, True),
        "build_kmap_hash@table": (coords, coords, kernel_offsets(3).to(device), True, True, *table),
        "build_kmap_sort@checked": (coords, coords, kernel_offsets(3).to(device), True, True),
        "downsample_coords_hash@checked": (coords, [2, 2, 2], True),
        "downsample_coords_sort@checked": (coords, [2, 2, 2], True),
        "kmap_tiling@table": (coords, cells, [2, 2, 2], [1, 1, 1], True, *cell_table),
        "downsample_tiling@checked": (coords, [2, 2, 2], [1, 1, 1], True),
        "kmap_transpose@checked": (kmap.neighbors, kmap.num_in, True),
        "kmap_csr": (kmap.neighbors,),
        "kmap_transpose": (kmap.neighbors, kmap.num_in),
        "kmap_reorder": (kmap.neighbors, 2, 8, True),
        "kmap_bitmask": (kmap.neighbors,),
        "conv_gather_scatter": (feats, weight, *pairs, kmap.num_out, identity),
        "conv_weight_grad": (feats, grad, *pairs, identity),
        "conv_grouped": (feats, weight, *pairs, kmap.out_pos, kmap.in_pos, kmap.num_out, identity, *plans),
        "conv_grouped_weight_grad": (feats, grad, *pairs, identity, plans[2]),
        "conv_implicit": (feats, weight, kmap.neighbors, forward.order, forward.tile_masks, kmap.neighbors_t,
                          backward.order, backward.tile_masks, *pairs, 8),
        "conv_implicit_weight_grad": (feats, grad, kmap.neighbors, forward.order, forward.tile_masks, 8, *pairs),
        "conv_implicit_affine_relu": (feats, weight, kmap.neighbors, forward.order, forward.tile_masks, 8,
                                      torch.ones(5, device=device), torch.zeros(5, device=device), True, grad.clone()),
    }
    if device == "cpu":  # the fused kernels and the fused norms run on the CPU only
        calls.update({
            "channel_moments": (feats,),
            "affine_relu": (feats, ones, zeros, True, feats.clone()),
            "batch_norm_relu_backward": (feats.clone(), feats, mean, var.add(1e-5).rsqrt(), ones, zeros, True),
            "conv_fused": (feats, weight, *pairs, kmap.num_out, identity),
            "conv_fused_affine_relu": (feats, weight, *pairs, kmap.num_out, identity, torch.ones(5),
                                       torch.zeros(5), True, grad.clone()),
            "conv_fused_weight_grad": (feats, grad, *pairs, identity),
        })
    return calls


def wrong_values(value, host_checked_only: bool) -> List[Tuple[str, object]]:
    """(description, replacement) pairs for one argument."""
    if isinstance(value, torch.Tensor):
        out = [("float64", value.double()), ("int64", value.long()), ("float16", value.half()),
               ("int32" if value.is_floating_point() else "float32", value.int() if value.is_floating_point()
                else value.float()),
               ("bool", value.bool()), ("extra leading dim", value.unsqueeze(0))]
        if value.device.type != "cpu":
            out.append(("on the CPU", value.cpu()))
        if host_checked_only:
            return out
        out += [("empty", value[:0]), ("one row fewer", value[:-1]), ("rows twice", torch.cat([value, value])),
                ("flattened", value.reshape(-1))]
        if value.dim() == 2 and value.shape[1] > 1:
            out += [("transposed", value.t()), ("every other column", value[:, ::2]),
                    ("one column fewer", value[:, 1:]), ("columns twice", value.repeat(1, 2))]
        if value.is_floating_point():
            out += [("nan", value * float("nan"))]
        else:
            out += [("+1000", value + 1000), ("-1000", value - 1000), ("all -1", value * 0 - 1),
                    ("int32 max", value * 0 + 2**31 - 1), ("reversed", value.flip(0))]
        return out
    if host_checked_only:
        return []
    if isinstance(value, bool):
        return [("flipped", not value)]
    if isinstance(value, int):
        return [(str(v), v) for v in (0, -1, -5, value + 1, value * 100, 2**31, 2**40)]
    if isinstance(value, list):
        return [(str(v), v) for v in ([], [0, 0, 0], [-1, 2, 2], [1], [2**31, 1, 1], [1, 1, 1, 1],
                                      list(reversed(value)), value + [1])]
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log", required=True)
    parser.add_argument("--host-checked-only", action="store_true")
    args = parser.parse_args(argv)
    log = open(args.log, "w")
    unexpected = []
    calls = 0
    for name, valid in valid_calls(args.device).items():
        op = getattr(torch.ops.pointsparse, name.split("@")[0])  # name@variant: another call of the op
        op(*valid)  # the valid call works
        for i, value in enumerate(valid):
            for what, wrong in wrong_values(value, args.host_checked_only):
                call = list(valid)
                call[i] = wrong
                log.write(f"{name}: argument {i} {what}\n")
                log.flush()
                calls += 1
                try:
                    op(*call)
                    if args.device != "cpu":
                        torch.cuda.synchronize()
                except EXPECTED:
                    pass
                except Exception as e:  # noqa: BLE001 (what the sweep looks for)
                    unexpected.append(f"{name}: argument {i} {what}: {type(e).__name__}: {e}")
    print(f"{calls} calls")
    for line in unexpected:
        print("UNEXPECTED", line)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
