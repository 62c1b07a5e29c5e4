"""The Python half of tools/gpu_check.sh: CPU-vs-device cross-check on real scans and a MinkUNet18
training step (float32 and AMP), written as JSON with the environment.

    python tools/gpu_check.py --device cuda --out OUTDIR            # on a GPU machine
    python tools/gpu_check.py --device cpu --quick --out OUTDIR     # the plumbing, on any machine

``--quick`` keeps every step but shrinks the inputs (a subsample of the scans, few channels,
cr 0.25), so that CI runs the whole path in seconds.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pointsparse as ps
from pointsparse import SparseTensor, crosscheck
from pointsparse.profiler import scan_input
from pointsparse.timing import environment as library_environment
from pointsparse.timing import time_ms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_summary import Network, Precision  # noqa: E402  (the summary's training step, one definition)

REPO = Path(__file__).resolve().parents[1]
SCANS = ("semantickitti/sequences/07/velodyne/000964.bin", "semantickitti/sequences/00/velodyne/000000.bin")


def shared_data() -> Path:
    """$POINTSPARSE_SHARED_DATA, else shared/data in the checkout, else ../shared/data (as the tests)."""
    if "POINTSPARSE_SHARED_DATA" in os.environ:
        return Path(os.environ["POINTSPARSE_SHARED_DATA"])
    inside = REPO / "shared" / "data"
    return inside if inside.exists() else REPO.parent / "shared" / "data"


def load_points(quick: bool) -> list:
    """float32 [N, 4] point arrays of the real scans; a generated street-like scan when absent."""
    found = [shared_data() / s for s in SCANS if (shared_data() / s).exists()]
    if not found:
        rng = np.random.default_rng(0)
        ground = np.c_[rng.uniform(-40, 40, (90000, 2)), rng.normal(-1.7, 0.03, 90000)]
        wall = np.c_[rng.uniform(-40, 40, 30000), np.full(30000, 8.0), rng.uniform(-1.7, 4, 30000)]
        points = np.c_[np.r_[ground, wall], rng.uniform(0, 1, 120000)].astype(np.float32)
        arrays = [points, points[::2] + np.float32([0.3, 0.1, 0, 0])]
    else:
        arrays = [np.fromfile(path, dtype=np.float32).reshape(-1, 4) for path in found]
    return [a[: len(a) // 8] if quick else a for a in arrays]


def collated(arrays: list, voxel_size: float = 0.05) -> SparseTensor:
    """Batch of the scans: coords int32 [N, 4], feats (x, y, z, remission) float32 [N, 4]."""
    return ps.sparse_collate([scan_input(array, voxel_size, "cpu") for array in arrays])


def environment(device: str) -> dict:
    return dict(library_environment(), requested_device=device)


def training_step_times(batch: SparseTensor, device: str, cr: float, amp: bool, repeats: int) -> dict:
    """Median wall time of one SGD step of MinkUNet18 (gpu_summary's step: fresh kernel maps each
    step, loss scaling under float16), peak memory, and whether every loss stayed finite."""
    device_type = torch.device(device).type
    # float16 with loss scaling on CUDA (what `pointsparse train` runs), bfloat16 on the CPU.
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    precision = Precision("amp", dtype) if amp else Precision("float32")
    net = Network(SparseTensor(batch.feats.to(device), batch.coords.to(device)), cr)
    scaler = net.scaler(precision)
    losses = [net.train_step(precision, scaler)]  # warm-up: allocator, cuBLAS handles
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = time_ms(lambda: losses.append(net.train_step(precision, scaler)), repeats, warmup=0)
    record = {"voxels": int(batch.coords.shape[0]), "cr": cr, "amp": amp, "dtype": str(dtype if amp else torch.float32),
              **timing, "losses_finite": bool(torch.isfinite(torch.stack(losses).float()).all())}
    if device_type == "cuda":
        record["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="small inputs: the plumbing only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"environment": environment(args.device)}
    arrays = load_points(args.quick)
    batch = collated(arrays)
    record["input"] = {"scans": len(arrays), "voxels": int(batch.coords.shape[0]),
                       "real": (shared_data() / SCANS[0]).exists()}
    print(f"cross-check on {batch.coords.shape[0]} voxels in {len(arrays)} batch items, {args.device} vs cpu",
          flush=True)

    start = time.perf_counter()
    checks = crosscheck.kmap_checks(batch.coords, args.device)
    channels = (8, 6) if args.quick else (40, 24)
    checks += crosscheck.conv_checks(batch.coords, args.device, *channels)
    record["crosscheck"] = crosscheck.summary(checks)
    record["crosscheck"]["seconds"] = time.perf_counter() - start
    for check in checks:
        print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}", flush=True)

    cr, repeats = (0.25, 1) if args.quick else (1.0, 3)
    record["minkunet18_step"] = {
        "float32": training_step_times(batch, args.device, cr, False, repeats),
        "amp": training_step_times(batch, args.device, cr, True, repeats),
    }
    for name, step in record["minkunet18_step"].items():
        memory = f", peak {step['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in step else ""
        print(f"MinkUNet18 cr {cr} training step, {name}: {step['median_ms']:.1f} ms median{memory}", flush=True)

    (out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'gpu_check.json'}; {record['crosscheck']['failed']} of "
          f"{record['crosscheck']['checks']} checks failed")
    failed_steps = [n for n, s in record["minkunet18_step"].items() if not s["losses_finite"]]
    return 1 if record["crosscheck"]["failed"] or failed_steps else 0


if __name__ == "__main__":
    sys.exit(main())
