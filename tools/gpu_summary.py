"""The GPU check's one summary file: MinkUNet18 on one scan, where its time goes, and a wide layer.

    python tools/gpu_summary.py --device cuda --scan SCAN --out OUTDIR/summary.json
    python tools/gpu_summary.py --device cpu --quick --scan SCAN --out OUTDIR/summary.json
    python tools/gpu_summary.py --add-tests OUTDIR/tests/tests.json --out OUTDIR/summary.json

Written: ``commit``, ``device``, ``torch``, ``scan``, ``voxels`` and ``minkunet18_cr1`` with
``train_step_ms`` {fp32, tf32, amp_fp16, amp_bf16}, ``inference_ms`` {fp32, fp16} (medians; every
step builds its kernel maps afresh, as a new scan does), ``kernel_maps_ms`` (all maps of one
inference forward, host time inside the builds), ``host_syncs_per_forward``,
``kernel_launches_per_train_step`` and ``peak_memory_mib`` (null where the device has no such
thing), the profiled breakdowns, ``layer_subm_k3_256_fp16_ms`` {forward, forward_backward} of
one submanifold k3 256->256 conv on the scan's voxels, map cached, and ``conv_host_us``: the host
time of a cached-map conv (``bench host``, the device's default dataflow). ``--add-tests`` adds the test
counts of ``tools/run_test_files.py``. ``--quick`` (the CPU mode CI runs) shrinks widths and
repeats: the plumbing only.
"""

import argparse
import json
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pointsparse import Dataflow, SparseTensor, dataflows
from pointsparse.bench import host
from pointsparse.timing import current_commit, environment, time_ms
from pointsparse.breakdown import breakdown, count_host_syncs
from pointsparse.models import minkunet18
from pointsparse.nn import SparseConv3d
from pointsparse.profiler import scan_input


@dataclass(frozen=True)
class Precision:
    """How a step runs: under autocast to ``autocast`` (None: off), with TF32 matmuls or not."""

    name: str
    autocast: Optional[torch.dtype] = None
    tf32: bool = False


TRAIN_PRECISIONS = (Precision("fp32"), Precision("tf32", tf32=True), Precision("amp_fp16", torch.float16),
                    Precision("amp_bf16", torch.bfloat16))
INFERENCE_PRECISIONS = (Precision("fp32"), Precision("fp16", torch.float16))


@contextmanager
def running_in(precision: Precision, device_type: str):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision.tf32 else "highest")
    autocast = (nullcontext() if precision.autocast is None
                else torch.autocast(device_type, dtype=precision.autocast))
    try:
        with autocast:
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Network:
    """MinkUNet18 on one scan: a training step (SGD, loss scaling under fp16 autocast on CUDA) and
    an inference forward, each on a new tensor (kernel maps built afresh)."""

    def __init__(self, x: SparseTensor, cr: float):
        torch.manual_seed(0)
        self.x, self.device_type = x, x.feats.device.type
        self.model = minkunet18(in_channels=4, num_classes=19, cr=cr).to(x.feats.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 19, (x.coords.shape[0],), generator=generator).to(x.feats.device)

    def fresh(self) -> SparseTensor:
        return SparseTensor(self.x.feats, self.x.coords)

    def train_step(self, precision: Precision, scaler: torch.amp.GradScaler) -> torch.Tensor:
        """One SGD step; returns the loss (on the device: no read-back)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with running_in(precision, self.device_type):
            loss = torch.nn.functional.cross_entropy(self.model(self.fresh()).float(), self.labels)
        scaler.scale(loss).backward()
        scaler.step(self.optimizer)
        scaler.update()
        return loss.detach()

    def infer(self, precision: Precision) -> None:
        self.model.eval()
        with torch.no_grad(), running_in(precision, self.device_type):
            self.model(self.fresh())

    def scaler(self, precision: Precision) -> torch.amp.GradScaler:
        fp16 = precision.autocast == torch.float16 and self.device_type == "cuda"
        return torch.amp.GradScaler(self.device_type, enabled=fp16)


def minkunet_numbers(x: SparseTensor, cr: float, repeats: int) -> dict:
    net = Network(x, cr)
    train = {}
    for precision in TRAIN_PRECISIONS:
        scaler = net.scaler(precision)
        train[precision.name] = time_ms(lambda: net.train_step(precision, scaler), repeats)["median_ms"]
    inference = {p.name: time_ms(lambda: net.infer(p), repeats)["median_ms"] for p in INFERENCE_PRECISIONS}
    fp32 = TRAIN_PRECISIONS[0]
    scaler = net.scaler(fp32)
    train_breakdown = breakdown(net.model, lambda: net.train_step(fp32, scaler), x.feats.device)
    inference_breakdown = breakdown(net.model, lambda: net.infer(fp32), x.feats.device)
    return {"cr": cr, "train_step_ms": train, "inference_ms": inference,
            "kernel_maps_ms": inference_breakdown["kernel_maps_ms"],
            "kernel_map_builds_per_forward": inference_breakdown["kernel_map_builds"],
            "host_syncs_per_forward": count_host_syncs(lambda: net.infer(fp32), x.feats.device),
            "kernel_launches_per_train_step": train_breakdown.get("kernel_launches"),
            "peak_memory_mib": train_breakdown.get("peak_memory_mib"),
            "breakdown": {"train_fp32": train_breakdown, "inference_fp32": inference_breakdown}}


def wide_layer_ms(x: SparseTensor, channels: int, repeats: int) -> dict:
    """One submanifold k3 conv ``channels -> channels`` on ``x``'s voxels, its map built beforehand:
    float16 on CUDA, float32 elsewhere (the CPU kernels' working type)."""
    dtype = torch.float16 if x.feats.device.type == "cuda" else torch.float32
    conv = SparseConv3d(channels, channels, 3).to(x.feats.device, dtype)
    feats = torch.randn(x.coords.shape[0], channels, device=x.feats.device, dtype=dtype)
    inp = x.with_feats(feats)
    out = conv(inp)  # builds and caches the map on inp's coordinates
    grad = torch.randn_like(out.feats)
    trainable = inp.with_feats(feats.clone().requires_grad_())

    def forward_backward():
        conv.zero_grad(set_to_none=True)
        conv(trainable).feats.backward(grad)

    with torch.no_grad():
        forward = time_ms(lambda: conv(inp), repeats)["median_ms"]
    return {"channels": channels, "dtype": str(dtype), "forward": forward,
            "forward_backward": time_ms(forward_backward, repeats)["median_ms"]}


def measure(scan: Path, device: str, quick: bool) -> dict:
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
    x = scan_input(points[::8] if quick else points, 0.05, device)
    repeats = 1 if quick else 5
    summary = {**environment(), "scan": scan.name if quick else str(scan), "voxels": int(x.coords.shape[0]),
               "quick": quick}
    summary["minkunet18_cr1"] = minkunet_numbers(x, 0.25 if quick else 1.0, repeats)
    summary["layer_subm_k3_256_fp16_ms"] = wide_layer_ms(x, 32 if quick else 256, repeats)
    summary["conv_host_us"] = conv_host_us(x, quick)
    return summary


def conv_host_us(x: SparseTensor, quick: bool) -> dict:
    """Host time of a cached-map conv with the device's default dataflow (``bench host``): under
    ``no_grad`` and with a weight that requires a gradient."""
    tiny = host.tiny_input(x.coords)
    dataflow = dataflows.resolve(Dataflow.AUTO, tiny.feats.device, tiny.feats.dtype).dataflow
    return {"dataflow": dataflow.value, **host.host_times(tiny, dataflow, 1 if quick else 10, 20 if quick else 1000)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scan", type=Path)
    parser.add_argument("--quick", action="store_true", help="small widths, one repeat: the plumbing only")
    parser.add_argument("--add-tests", type=Path, metavar="TESTS_JSON", help="add run_test_files.py's counts")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.add_tests:
        summary = json.loads(args.out.read_text()) if args.out.exists() else {"commit": current_commit()}
        tests = json.loads(args.add_tests.read_text())
        summary[f"{args.device}_tests"] = {**tests["total"], "crashes": tests["crashes"]}
    else:
        if args.scan is None:
            parser.error("--scan is needed to measure")
        summary = measure(args.scan, args.device, args.quick)
        net = summary["minkunet18_cr1"]
        print(f"MinkUNet18 cr {net['cr']} on {summary['voxels']} voxels ({args.device}): train step ms "
              f"{net['train_step_ms']}, inference ms {net['inference_ms']}, kernel maps {net['kernel_maps_ms']:.1f} ms "
              f"({net['kernel_map_builds_per_forward']} builds), host syncs per forward {net['host_syncs_per_forward']}, "
              f"launches per train step {net['kernel_launches_per_train_step']}, peak {net['peak_memory_mib']} MiB; "
              f"wide layer {summary['layer_subm_k3_256_fp16_ms']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
