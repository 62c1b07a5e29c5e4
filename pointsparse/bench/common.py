"""Arguments, scan loading and result records shared by the benchmark suites (timing and the
environment: :mod:`pointsparse.timing`)."""

import argparse
import json
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..quantize import sparse_quantize



def add_scan_arguments(parser: argparse.ArgumentParser, suite: str, repeats: int, many_scans: bool = False,
                       device_help: str = "cpu or cuda") -> None:
    """Options every suite takes: the scan (or scans), its voxel size, threads, repeats, the device
    and the JSON path."""
    if many_scans:
        parser.add_argument("--scan", required=True, nargs="+", help="KITTI-format .bin scans")
    else:
        parser.add_argument("--scan", required=True, help="KITTI-format .bin scan")
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument("--out", default=f"bench_results/{suite}.json")


def check_device(device: str) -> None:
    """SystemExit naming the problem when ``device`` is CUDA and none is usable."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device and a CUDA build of torch")


def ratios_against(reference: Dict[str, Dict[str, float]], record: Dict[str, Dict[str, float]],
                   parts=("forward", "forward_backward")) -> Dict[str, float]:
    """Per timed part, the reference's median over the record's (above 1: the record is faster)."""
    return {p: reference[p]["median_ms"] / record[p]["median_ms"] for p in parts}


def load_voxels(scan: str, voxel_size: float, device: str) -> torch.Tensor:
    """int32 [N, 4] voxel coordinates (batch 0) of a KITTI-format .bin scan (float32 x, y, z, r)."""
    path = Path(scan)
    if not path.exists():
        raise SystemExit(f"scan {path} not found: pass --scan path/to/NNNNNN.bin")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]
    xyz = torch.from_numpy(sparse_quantize(points, voxel_size))
    return torch.cat([torch.zeros(xyz.shape[0], 1, dtype=torch.int32), xyz], 1).to(device)


def write_json(path: str, record: Dict[str, object]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
