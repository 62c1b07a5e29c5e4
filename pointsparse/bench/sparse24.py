"""2:4-pruned MinkUNet18 inference on sparse tensor cores against the same masked model dense.

The model is magnitude-pruned (every layer but the stem and the classifier), put in eval mode and
run under ``torch.autocast`` in ``--dtype`` without gradients. Per conv layer that the backend can
take: median ms of the masked dense layer and of the layer on sparse tensor cores
(:mod:`pointsparse.semi_structured`), on the inputs the layer sees in the network (kernel maps
cached); then the whole network both ways, in the same run. Needs a CUDA device of compute
capability 8.0 or newer; elsewhere it says so and exits 0.
"""

import argparse

import numpy as np
import torch

from .. import pruning, semi_structured
from ..models import build_model
from ..pointclouds import voxelize_scan
from ..profiler import capture_conv_inputs
from ..timing import environment, time_ms
from .common import add_scan_arguments, check_device, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scan_arguments(parser, "sparse24", repeats=20, device_help="cuda (sm80+)")
    parser.add_argument("--cr", type=float, default=1.0)
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--min-pairs", type=int, default=semi_structured.MIN_PAIRS,
                        help="offsets with fewer pairs run dense")


def run(args) -> int:
    check_device(args.device)
    device = torch.device(args.device)
    if not semi_structured.available(device):
        print(f"no sparse tensor cores on {device} (CUDA compute capability 8.0+ needed): nothing to time")
        return 0
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    points = np.fromfile(args.scan, dtype=np.float32).reshape(-1, 4)
    x, _ = voxelize_scan(points, args.voxel_size, args.device)
    model = build_model("minkunet18", num_classes=19, in_channels=4, cr=args.cr).to(device).eval()
    pruning.prune_model(model, "magnitude")
    layers = capture_conv_inputs(model, x)
    record = {"env": environment(), "scan": args.scan, "voxels": int(x.coords.shape[0]), "cr": args.cr,
              "dtype": args.dtype, "min_pairs": args.min_pairs, "layers": {}, "network": {}}

    def timed(fn):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            return time_ms(fn, args.repeats)

    record["network"]["dense"] = timed(lambda: model(x))
    skipped = dict(semi_structured.enable_sparse_kernels(model, dtype, min_pairs=args.min_pairs))
    record["network"]["sparse"] = timed(lambda: model(x))
    record["skipped"] = skipped
    print(f"{'layer':<30}{'shape':<22}{'dense ms':>10}{'2:4 ms':>10}{'speed-up':>10}")
    for layer in layers:
        m = layer.module
        if layer.name in skipped or m.semi_structured is None:
            continue
        shape = f"k{m.kernel_size[0]}s{m.stride[0]} {m.in_channels}->{m.out_channels}"
        sparse = timed(lambda: m(layer.x))
        weights, m.semi_structured = m.semi_structured, None
        dense = timed(lambda: m(layer.x))
        m.semi_structured = weights
        speedup = dense["median_ms"] / sparse["median_ms"]
        record["layers"][layer.name] = {"shape": shape, "dense": dense, "sparse": sparse, "speedup": speedup}
        print(f"{layer.name:<30}{shape:<22}{dense['median_ms']:>10.3f}{sparse['median_ms']:>10.3f}{speedup:>9.2f}x")
    net = record["network"]
    net["speedup"] = net["dense"]["median_ms"] / net["sparse"]["median_ms"]
    print(f"whole network: dense {net['dense']['median_ms']:.2f} ms, 2:4 {net['sparse']['median_ms']:.2f} ms "
          f"({net['speedup']:.2f}x); {len(skipped)} pruned layers left dense")
    write_json(args.out, record)
    return 0
