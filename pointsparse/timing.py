"""Wall-clock timing and the environment a measurement ran in (the profiler, tuner and benchmarks)."""

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median and best wall time of fn in milliseconds (CUDA synchronised when in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "best_ms": min(samples)}


def device_time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> Optional[float]:
    """Mean GPU time of the kernels one call of fn launches (the profiler's CUDA activity, every
    thread: autograd runs the CUDA backward on a thread of its own), after one warm-up call; None
    off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.events()) / 1e3 / repeats


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def current_commit() -> str:
    """$POINTSPARSE_COMMIT (a checkout copied without .git, as on a GPU machine), else git's HEAD."""
    if os.environ.get("POINTSPARSE_COMMIT"):
        return os.environ["POINTSPARSE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> Dict[str, object]:
    """Commit, versions, the device (the GPU when CUDA is usable, else the CPU) and thread counts."""
    cuda = torch.cuda.is_available()
    env = {"commit": current_commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": sys.version.split()[0], "device": torch.cuda.get_device_name() if cuda else _cpu_name(),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "fused_cpu_isa": torch.ops.pointsparse.fused_cpu_isa()}
    if cuda:
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return env
