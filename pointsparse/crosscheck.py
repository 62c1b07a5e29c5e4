"""One input, two devices: every kernel-map op and every conv kind computed on the CPU and on a
device, compared. The CUDA tests and ``tools/gpu_check.py`` run it on real scans; on a machine
without a GPU it runs CPU against CPU (the plumbing, and the half / bfloat16 error bounds).

Contracts checked:
  * kernel-map ops: results equal exactly (``torch.equal``), every op and both algorithms;
  * convs, forward and both gradients, in the dataflows that run on the device (gather-GEMM-scatter
    with one GEMM per offset and grouped, implicit GEMM, the fused kernels on the CPU):
      - float64: equal to the CPU float64 result within 1e-9 (relative to the largest value);
      - float32: within ``FLOAT32_TOLERANCE`` of the CPU float32 result;
      - float16 / bfloat16: within ``REDUCED_TOLERANCE`` of the CPU float64 reference;
      - two identical runs on the device are bitwise equal.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from . import dataflows, ops
from . import functional as F
from .config import ConvConfig, Dataflow, KernelMapAlgo
from .grouping import ConvGrouping, Grouping, GroupingConfig
from .implicit import ImplicitGemmConfig
from .offsets import kernel_offsets
from .tensor import SparseTensor, kernel_map

# Largest error relative to the largest reference value.
FLOAT64_TOLERANCE = 1e-9
FLOAT32_TOLERANCE = 1e-5
# Inputs rounded to the dtype, products rounded once per offset, sums in float32.
REDUCED_TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2}

# name: (kernel_size, stride, dilation, transposed)
CONV_KINDS: Dict[str, Tuple[int, int, int, bool]] = {
    "submanifold k3": (3, 1, 1, False),
    "submanifold k5 dilation 2": (5, 1, 2, False),
    "strided k3 s2": (3, 2, 1, False),
    "tiling k2 s2": (2, 2, 1, False),
    "transposed k2 s2": (2, 2, 1, True),
}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def _equal_check(name: str, cpu_result, device_result) -> Check:
    cpu_parts = cpu_result if isinstance(cpu_result, (tuple, list)) else (cpu_result,)
    device_parts = device_result if isinstance(device_result, (tuple, list)) else (device_result,)
    mismatched = [i for i, (a, b) in enumerate(zip(cpu_parts, device_parts))
                  if a.shape != b.shape or not torch.equal(a, b.cpu())]
    detail = f"{len(cpu_parts)} output(s), shapes {[tuple(p.shape) for p in cpu_parts]}"
    if mismatched:
        detail += f"; outputs {mismatched} differ"
    return Check(name, not mismatched, detail)


def kmap_checks(coords: Tensor, device: str) -> List[Check]:
    """Every kernel-map op on ``coords`` (int32 ``[N, 4]``, CPU) on the CPU and on ``device``."""
    on = {"cpu": coords, device: coords.to(device)}

    def both(name: str, fn: Callable[[Tensor, str], object]) -> Check:
        return _equal_check(name, fn(on["cpu"], "cpu"), fn(on[device], device))

    checks = [both("pack_coords", lambda c, d: ops.pack_coords(c))]
    for algo in KernelMapAlgo:
        down = ops.downsample_coords_hash if algo is KernelMapAlgo.HASH else ops.downsample_coords_sort
        build = ops.build_kmap_hash if algo is KernelMapAlgo.HASH else ops.build_kmap_sort
        for factor in ((2, 2, 2), (2, 3, 1)):
            checks.append(both(f"downsample_coords_{algo.value} {factor}", lambda c, d: down(c, factor)))
        cases = {  # name: (kernel_size, dilation, symmetric, strided)
            "submanifold k3 symmetric": (3, 1, True, False),
            "submanifold k3 unsymmetric": (3, 1, False, False),
            "submanifold k5 dilation 2": (5, 2, True, False),
            "strided k3 s2": (3, 1, False, True),
            "strided k2 s2": (2, 1, False, True),
        }
        for case, (size, dil, symmetric, strided) in cases.items():
            def table(c: Tensor, d: str, size=size, dil=dil, symmetric=symmetric, strided=strided) -> Tensor:
                out = ops.downsample_coords_sort(c, (2, 2, 2)) if strided else c
                return build(c, out, kernel_offsets(size, dil).to(d), symmetric)
            checks.append(both(f"build_kmap_{algo.value} {case}", table))
    checks.append(both("kmap_tiling k2", lambda c, d: ops.kmap_tiling(
        c, ops.downsample_coords_hash(c, (2, 2, 2)), (2, 2, 2), (1, 1, 1))))
    for size, stride in (((2, 2, 2), (1, 1, 1)), ((2, 2, 1), (1, 1, 2))):
        checks.append(both(f"downsample_tiling {size} at {stride}",
                           lambda c, d, size=size, stride=stride: ops.downsample_tiling(c, size, stride)))
    neighbors = lambda c, d: ops.build_kmap_hash(c, c, kernel_offsets(3).to(d), True)  # noqa: E731
    checks.append(both("kmap_csr", lambda c, d: ops.kmap_csr(neighbors(c, d))))
    checks.append(both("kmap_bitmask K=27", lambda c, d: ops.kmap_bitmask(neighbors(c, d))))
    checks.append(both("kmap_bitmask K=40", lambda c, d: ops.kmap_bitmask(
        torch.cat([neighbors(c, d), neighbors(c, d)[:, :13]], 1))))
    checks.append(both("kmap_bitmask K=0", lambda c, d: ops.kmap_bitmask(neighbors(c, d)[:, :0])))
    return checks


def _relative_error(value: Tensor, reference: Tensor) -> float:
    scale = reference.abs().max().item() if reference.numel() else 0.0
    error = (value.double().cpu() - reference.double().cpu()).abs().max().item() if value.numel() else 0.0
    return error / scale if scale > 0 else error


# The dataflows compared: gather-GEMM-scatter one GEMM per offset, grouped (a different strategy per
# pass, so every grouped kernel runs), implicit GEMM (sorted, two splits) and the fused CPU kernels.
_GROUPED = ConvGrouping(GroupingConfig(Grouping.DENSE), GroupingConfig(Grouping.SYMMETRIC),
                        GroupingConfig(Grouping.ADAPTIVE, epsilon=0.5))


def _configs(device: str) -> Dict[str, ConvConfig]:
    configs = {"gather_gemm_scatter": ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER),
               "grouped": ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER, grouping=_GROUPED),
               "implicit_gemm": ConvConfig(dataflow=Dataflow.IMPLICIT_GEMM, implicit=ImplicitGemmConfig(32, True, 2))}
    if dataflows.runs_on(Dataflow.FUSED, device):
        configs["fused"] = ConvConfig(dataflow=Dataflow.FUSED)
    return configs


@dataclass(frozen=True)
class ConvProblem:
    """A conv kind with fixed float64 inputs: feats at its input coordinates, weight and the
    probe that weights the outputs into a scalar loss."""

    coords: Tensor        # int32 [N, 4] of the fine tensor
    kind: Tuple[int, int, int, bool]
    feats: Tensor         # float64 [N_in, C_in] at the conv's input
    weight: Tensor        # float64 [K, C_in, C_out]
    probe: Tensor         # float64 [N_out, C_out]

    def run(self, device: str, dtype: torch.dtype, config: ConvConfig) -> Tuple[Tensor, Tensor, Tensor]:
        """(out, grad_feats, grad_weight) on ``device`` in ``dtype``, each as float64 on the CPU."""
        size, stride, dilation, transposed = self.kind
        x = _conv_input(self.coords.to(device), self.kind)
        feats = self.feats.to(device, dtype, copy=True).requires_grad_()
        weight = self.weight.to(device, dtype, copy=True).requires_grad_()
        y = F.conv3d(x.with_feats(feats), weight, kernel_size=size, stride=stride, dilation=dilation,
                     transposed=transposed, config=config)
        (y.feats * self.probe.to(device, dtype)).sum().backward()
        return tuple(t.detach().double().cpu() for t in (y.feats, feats.grad, weight.grad))


def _conv_input(coords: Tensor, kind: Tuple[int, int, int, bool]) -> SparseTensor:
    """The tensor (no channels yet) a conv of ``kind`` reads: the fine one, or for a transposed conv
    the coarse one made by the strided conv it inverts, sharing the fine tensor's cache."""
    size, stride, _dilation, transposed = kind
    fine = SparseTensor(torch.zeros(coords.shape[0], 0, device=coords.device), coords)
    if not transposed:
        return fine
    coarse = kernel_map(fine, size, stride)
    return SparseTensor(torch.zeros(coarse.num_out, 0, device=coords.device), coarse.out_coords, stride,
                        fine.cache)


def conv_problem(coords: Tensor, kind: Tuple[int, int, int, bool], c_in: int, c_out: int,
                 seed: int = 0) -> ConvProblem:
    size, stride, dilation, transposed = kind
    x = _conv_input(coords, kind)
    n_out = kernel_map(x, size, stride, dilation, transposed).num_out
    gen = torch.Generator().manual_seed(seed)
    volume = size ** 3
    feats = torch.randn(x.coords.shape[0], c_in, generator=gen, dtype=torch.float64)
    weight = torch.randn(volume, c_in, c_out, generator=gen, dtype=torch.float64) / math.sqrt(c_in * volume)
    probe = torch.randn(n_out, c_out, generator=gen, dtype=torch.float64)
    return ConvProblem(coords, kind, feats, weight, probe)


def conv_checks(coords: Tensor, device: str, c_in: int = 40, c_out: int = 24,
                dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32, torch.float16, torch.bfloat16),
                kinds: Sequence[str] = tuple(CONV_KINDS)) -> List[Check]:
    """Every conv kind in ``kinds`` on ``device`` against the CPU (see the module docstring)."""
    checks = []
    names = ("forward", "grad feats", "grad weight")
    for kind_name in kinds:
        problem = conv_problem(coords, CONV_KINDS[kind_name], c_in, c_out)
        reference = problem.run("cpu", torch.float64, ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER))
        for flow, config in _configs(device).items():
            for dtype in dtypes:
                label = f"conv {kind_name} {flow} {str(dtype).replace('torch.', '')}"
                result = problem.run(device, dtype, config)
                if dtype in REDUCED_TOLERANCE:
                    against, bound = reference, REDUCED_TOLERANCE[dtype]
                elif dtype == torch.float32:
                    against, bound = problem.run("cpu", dtype, config), FLOAT32_TOLERANCE
                else:
                    against, bound = reference, FLOAT64_TOLERANCE
                errors = [_relative_error(r, a) for r, a in zip(result, against)]
                detail = ", ".join(f"{n} {e:.2e}" for n, e in zip(names, errors)) + f" (bound {bound:.0e})"
                checks.append(Check(label, all(e <= bound for e in errors), detail))
                again = problem.run(device, dtype, config)
                checks.append(Check(f"{label} deterministic", all(torch.equal(a, b) for a, b in zip(result, again)),
                                    "two identical runs bitwise equal"))
    return checks


def summary(checks: Sequence[Check]) -> Dict[str, object]:
    failed = [c for c in checks if not c.passed]
    return {"checks": len(checks), "failed": len(failed),
            "results": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks]}
