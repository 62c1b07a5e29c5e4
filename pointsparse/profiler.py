"""Where a network's time goes under every strategy: ``pointsparse profile`` and :func:`profile`.

Forward pre-hooks capture the real input of every :class:`~pointsparse.nn.SparseConv3d` of the model
on a sample; each layer then runs every candidate strategy (:mod:`pointsparse.strategies`) on that
input: forward, input gradient and weight gradient timed separately (median after warm-up), with the
work each implies. The report names the best strategy per layer for inference (forward) and for
training (all three), and totals the network: the sum of the per-layer best against each single
strategy used everywhere.
"""

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import functional as F
from .config import Dataflow
from .dataflows import REGISTRY
from .nn import SparseConv3d
from .pointclouds import voxelize_scan
from .strategies import Strategy, candidates, check_families, config_from_dict, config_to_dict, work_of
from .tensor import SparseTensor, kernel_map
from .timing import device_time_ms, environment, time_ms


@dataclass
class LayerInput:
    """A conv layer and the input it saw (features detached; the cache holds its maps)."""

    name: str
    module: SparseConv3d
    x: SparseTensor


def capture_conv_inputs(model: nn.Module, x: SparseTensor) -> List[LayerInput]:
    """Runs ``model`` on ``x`` once (no grad, eval mode) and records every SparseConv3d's input."""
    captured: List[LayerInput] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, SparseConv3d):
            def hook(module, args, name=name):
                inp = args[0]
                captured.append(LayerInput(name, module, inp.with_feats(inp.feats.detach().clone())))
            handles.append(module.register_forward_pre_hook(hook))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return captured


@dataclass(frozen=True)
class Timing:
    forward_ms: float
    input_grad_ms: float
    weight_grad_ms: float
    # On CUDA: GPU time of each pass's kernels (the wall times above include the host's share).
    forward_gpu_ms: Optional[float] = None
    input_grad_gpu_ms: Optional[float] = None
    weight_grad_gpu_ms: Optional[float] = None

    @property
    def inference_ms(self) -> float:
        return self.forward_ms

    @property
    def training_ms(self) -> float:
        return self.forward_ms + self.input_grad_ms + self.weight_grad_ms


GPU_REPEATS = 3  # profiled calls per pass for the GPU times (after the wall-time repeats)


def time_layer(layer: LayerInput, strategy: Strategy, repeats: int, gpu_times: bool = True) -> Timing:
    """Median forward, input-gradient and weight-gradient times of ``layer`` under ``strategy``;
    on CUDA (and with ``gpu_times``) also the GPU time of each pass's kernels."""
    module, x = layer.module, layer.x
    weight = module.weight.detach()

    def conv(feats, w):
        return F.conv3d(x.with_feats(feats), w, config=strategy.config, **module.geometry).feats

    def forward():
        with torch.no_grad():
            return conv(x.feats, weight)

    out = forward()
    grad = torch.randn_like(out)
    feats = x.feats.clone().requires_grad_()
    by_feats = conv(feats, weight)
    w = weight.clone().requires_grad_()
    by_weight = conv(x.feats, w)
    passes = (forward, lambda: torch.autograd.grad(by_feats, feats, grad, retain_graph=True),
              lambda: torch.autograd.grad(by_weight, w, grad, retain_graph=True))
    walls = [time_ms(run, repeats)["median_ms"] for run in passes]
    gpus = [device_time_ms(run, GPU_REPEATS, x.feats.device) if gpu_times else None for run in passes]
    return Timing(*walls, *gpus)


@dataclass
class StrategyResult:
    strategy: str
    config: Dict[str, object]
    useful_macs: int
    computed_macs: int
    redundancy: float
    gemm_calls: Optional[int]
    forward_ms: float
    input_grad_ms: float
    weight_grad_ms: float
    forward_gpu_ms: Optional[float] = None  # on CUDA: the pass's kernels (see Timing)
    input_grad_gpu_ms: Optional[float] = None
    weight_grad_gpu_ms: Optional[float] = None

    @property
    def training_ms(self) -> float:
        return self.forward_ms + self.input_grad_ms + self.weight_grad_ms


@dataclass
class LayerReport:
    name: str
    tensor_stride: List[int]
    kernel_size: List[int]
    stride: List[int]
    transposed: bool
    c_in: int
    c_out: int
    n_in: int
    n_out: int
    n_k: List[int]
    results: List[StrategyResult] = field(default_factory=list)

    @property
    def best_inference(self) -> StrategyResult:
        return min(self.results, key=lambda r: r.forward_ms)

    @property
    def best_training(self) -> StrategyResult:
        return min(self.results, key=lambda r: r.training_ms)

    def result(self, strategy: str) -> StrategyResult:
        return next(r for r in self.results if r.strategy == strategy)


@dataclass
class ProfileReport:
    model: str
    environment: Dict[str, object]
    voxels: int
    layers: List[LayerReport]
    # Whole-network ms, measured in the same run: the per-layer best for training against the
    # single strategy with the lowest training total ({"tuned": {...}, "<strategy>": {...}}).
    end_to_end: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def strategies(self) -> List[str]:
        """Strategies measured on every layer (splits beyond a kernel's offsets drop out on k1)."""
        if not self.layers:
            return []
        everywhere = set.intersection(*({r.strategy for r in l.results} for l in self.layers))
        return [r.strategy for r in self.layers[0].results if r.strategy in everywhere]

    def totals(self) -> Dict[str, Dict[str, float]]:
        """ms per network: the per-layer best, and each strategy everywhere (inference, training)."""
        totals = {"best per layer": {"inference_ms": sum(l.best_inference.forward_ms for l in self.layers),
                                     "training_ms": sum(l.best_training.training_ms for l in self.layers)}}
        for name in self.strategies():
            totals[name] = {"inference_ms": sum(l.result(name).forward_ms for l in self.layers),
                            "training_ms": sum(l.result(name).training_ms for l in self.layers)}
        return totals

    def to_dict(self) -> Dict[str, object]:
        layers = []
        for layer in self.layers:
            record = asdict(layer)
            record["best_inference"] = layer.best_inference.strategy
            record["best_training"] = layer.best_training.strategy
            layers.append(record)
        return {"model": self.model, "environment": self.environment, "voxels": self.voxels,
                "layers": layers, "totals": self.totals(), "end_to_end": self.end_to_end}

    def table(self) -> str:
        on_gpu = any(r.forward_gpu_ms is not None for l in self.layers for r in l.results)
        header = (f"{'layer':<34}{'ts':>4}{'k':>3}{'s':>3}{'C_in->C_out':>13}{'N_in':>8}{'N_out':>8}"
                  f"{'n_k min/med/max':>20}  {'best inference':<28}{'fwd ms':>8}  {'best training':<28}{'train ms':>9}"
                  + (f"{'GPU fwd/in/w ms':>22}" if on_gpu else ""))
        lines = [header, "-" * len(header)]
        for l in self.layers:
            inf, tr = l.best_inference, l.best_training
            nk = [n for n in l.n_k if n > 0] or [0]
            gpu = ""
            if on_gpu:  # the best training strategy's kernels, per pass
                gpu = f"{tr.forward_gpu_ms:.2f}/{tr.input_grad_gpu_ms:.2f}/{tr.weight_grad_gpu_ms:.2f}"
            lines.append(f"{l.name:<34}{l.tensor_stride[0]:>4}{l.kernel_size[0]:>3}{l.stride[0]:>3}"
                         f"{f'{l.c_in}->{l.c_out}':>13}{l.n_in:>8}{l.n_out:>8}"
                         f"{f'{min(nk)}/{statistics.median(nk):.0f}/{max(nk)}':>20}  {inf.strategy:<28}"
                         f"{inf.forward_ms:>8.2f}  {tr.strategy:<28}{tr.training_ms:>9.2f}{gpu:>22}")
        lines.append("")
        lines.append(f"{'network total':<34}{'inference ms':>14}{'training ms':>14}")
        for name, total in sorted(self.totals().items(), key=lambda item: item[1]["training_ms"]):
            lines.append(f"{name:<34}{total['inference_ms']:>14.1f}{total['training_ms']:>14.1f}")
        if self.end_to_end:
            lines.append("")
            lines.append(f"{'whole network, one run':<34}{'forward ms':>14}{'fwd+bwd ms':>14}")
            for name, times in self.end_to_end.items():
                lines.append(f"{name:<34}{times['forward_ms']:>14.1f}{times['forward_backward_ms']:>14.1f}")
        return "\n".join(lines)

    def write(self, out_dir: Path) -> List[Path]:
        """report.json, report.csv and the plots into ``out_dir``; returns the paths written."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        with open(out_dir / "report.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "strategy", "useful_macs", "computed_macs", "redundancy", "gemm_calls",
                             "forward_ms", "input_grad_ms", "weight_grad_ms", "forward_gpu_ms", "input_grad_gpu_ms",
                             "weight_grad_gpu_ms", "best_inference", "best_training"])
            for l in self.layers:
                for r in l.results:
                    gpu = [("" if t is None else f"{t:.4f}")
                           for t in (r.forward_gpu_ms, r.input_grad_gpu_ms, r.weight_grad_gpu_ms)]
                    writer.writerow([l.name, r.strategy, r.useful_macs, r.computed_macs, f"{r.redundancy:.4f}",
                                     "" if r.gemm_calls is None else r.gemm_calls, f"{r.forward_ms:.4f}",
                                     f"{r.input_grad_ms:.4f}", f"{r.weight_grad_ms:.4f}", *gpu,
                                     int(r is l.best_inference), int(r is l.best_training)])
        return [out_dir / "report.json", out_dir / "report.csv"] + plot_report(self, out_dir)


def plot_report(report: ProfileReport, out_dir: Path) -> List[Path]:
    """time_per_layer.png, redundancy.png and nk_histograms.png (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [l.name for l in report.layers]
    positions = np.arange(len(names))
    paths = []
    families = {}  # family -> its best strategy per layer (forward ms)
    for l in report.layers:
        for r in l.results:
            family = REGISTRY[Dataflow(r.config["dataflow"])].family
            best = families.setdefault(family, {})
            if l.name not in best or r.forward_ms < best[l.name]:
                best[l.name] = r.forward_ms
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(names)), 5))
    width = 0.8 / max(len(families), 1)
    for i, (family, best) in enumerate(families.items()):
        ax.bar(positions + i * width, [best[n] for n in names], width, label=f"{family} (best setting)")
    ax.set_xticks(positions + 0.4 - width / 2, names, rotation=90, fontsize=6)
    ax.set_ylabel("forward ms")
    ax.set_title(f"{report.model}: forward time per layer by strategy family")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "time_per_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(names)), 4))
    for label, pick in (("implicit unsorted", lambda s: "unsorted" in s),
                        ("implicit sorted (best split)", lambda s: s.startswith("implicit") and "sorted s" in s
                         and "unsorted" not in s)):
        values = [min((r.redundancy for r in l.results if pick(r.strategy)), default=0.0) for l in report.layers]
        ax.plot(positions, [100 * v for v in values], marker="o", label=label)
    ax.set_xticks(positions, names, rotation=90, fontsize=6)
    ax.set_ylabel("redundant MACs %")
    ax.set_title("implicit GEMM redundancy per layer, before / after reordering")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "redundancy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    cols = 6
    rows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.8 * rows), squeeze=False)
    for ax, l in zip(axes.flat, report.layers):
        ax.bar(np.arange(len(l.n_k)), l.n_k, width=1.0)
        ax.set_title(l.name, fontsize=5)
        ax.tick_params(labelsize=4)
    for ax in list(axes.flat)[len(report.layers):]:
        ax.axis("off")
    fig.suptitle("pairs per offset (n_k) per layer")
    fig.tight_layout()
    paths.append(out_dir / "nk_histograms.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def network_times(model: nn.Module, x: SparseTensor, repeats: int) -> Dict[str, float]:
    """Median ms of a whole forward (eval, no grad) and forward+backward (train mode) of ``model``;
    every call builds its kernel maps afresh, as a new scan would."""
    training = model.training

    def forward():
        with torch.no_grad():
            return model(SparseTensor(x.feats, x.coords, x.stride))

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(SparseTensor(x.feats, x.coords, x.stride)).float().square().mean().backward()

    try:
        model.eval()
        inference = time_ms(forward, repeats)["median_ms"]
        model.train()
        training_ms = time_ms(forward_backward, repeats)["median_ms"]
    finally:
        model.train(training)
        model.zero_grad(set_to_none=True)
    return {"forward_ms": inference, "forward_backward_ms": training_ms}


def compare_end_to_end(model: nn.Module, x: SparseTensor, report: "ProfileReport",
                       repeats: int) -> Dict[str, Dict[str, float]]:
    """Whole-network times with each layer on its best training strategy, and with the best single
    strategy everywhere, in one run; the layers' configs are restored afterwards."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, SparseConv3d)}
    saved = {name: m.config for name, m in convs.items()}
    totals = report.totals()
    single = min(report.strategies(), key=lambda name: totals[name]["training_ms"])
    try:
        for layer in report.layers:
            convs[layer.name].config = config_from_dict(layer.result(single).config)
        times = {f"single: {single}": network_times(model, x, repeats)}
        for layer in report.layers:
            convs[layer.name].config = config_from_dict(layer.best_training.config)
        times["tuned (best per layer)"] = network_times(model, x, repeats)
    finally:
        for name, config in saved.items():
            convs[name].config = config
    return times


def scan_input(points: np.ndarray, voxel_size: float, device: str) -> SparseTensor:
    """Voxels of one KITTI-format scan (float32 [N, 4]) with (x, y, z, remission) features."""
    return voxelize_scan(points, voxel_size, device)[0]


def profile(model: nn.Module, x: SparseTensor, *, model_name: str = "model", repeats: int = 5,
            quick: bool = False, families: Optional[Sequence[str]] = None,
            progress: Optional[Callable[[Sequence], Sequence]] = None) -> ProfileReport:
    """Profiles every conv layer of ``model`` on ``x`` under every candidate strategy (of
    ``families``: fused, ggs, implicit; default all that run on the device)."""
    if families is not None:
        check_families(families)
    layers = capture_conv_inputs(model, x)
    reports = []
    for layer in (progress(layers) if progress else layers):
        m = layer.module
        strategies = [c for c in candidates(x.feats.device, m.weight.shape[0], quick)
                      if families is None or c.family in families]
        if not strategies:
            raise ValueError(f"none of the strategy families {list(families)} runs on {x.feats.device}")
        kmap = kernel_map(layer.x, **m.geometry)
        identity = m.identity_offset
        report = LayerReport(layer.name, list(layer.x.stride), list(m.kernel_size), list(m.stride), m.transposed,
                             m.in_channels, m.out_channels, layer.x.coords.shape[0], kmap.num_out,
                             kmap.pair_counts.tolist())
        for strategy in strategies:
            work = work_of(strategy.config, kmap, identity)
            timing = time_layer(layer, strategy, repeats)
            macs = m.in_channels * m.out_channels
            report.results.append(StrategyResult(
                strategy.name, config_to_dict(strategy.config), work.useful_rows * macs, work.computed_rows * macs,
                work.redundancy, work.gemm_calls, timing.forward_ms, timing.input_grad_ms, timing.weight_grad_ms,
                timing.forward_gpu_ms, timing.input_grad_gpu_ms, timing.weight_grad_gpu_ms))
        reports.append(report)
    env = environment()
    env["dtype"] = str(x.feats.dtype)
    report = ProfileReport(model_name, env, x.coords.shape[0], reports)
    report.end_to_end = compare_end_to_end(model, x, report, repeats)
    return report
