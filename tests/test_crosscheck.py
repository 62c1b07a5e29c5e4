"""pointsparse.crosscheck, the comparison the CUDA tests and tools/gpu_check.py run, exercised CPU
against CPU: its plumbing, and the half / bfloat16 error bounds of the CPU kernels."""

import pytest
import torch

from pointsparse import crosscheck

from helpers import random_tensor


@pytest.fixture(scope="module")
def coords() -> torch.Tensor:
    """Ragged batch 2 with negative coordinates, a few thousand voxels."""
    x = random_tensor(num_points=4000, span=30, batches=2, seed=4)
    return x.coords - torch.tensor([0, 11, 7, 13], dtype=torch.int32)


def test_every_kernel_map_op_is_compared(coords):
    checks = crosscheck.kmap_checks(coords, "cpu")
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    names = " ".join(c.name for c in checks)
    for op in ("pack_coords", "downsample_coords_hash", "downsample_coords_sort", "build_kmap_hash",
               "build_kmap_sort", "kmap_tiling", "downsample_tiling", "kmap_csr", "kmap_bitmask K=0"):
        assert op in names


@pytest.mark.parametrize("kind", list(crosscheck.CONV_KINDS))
def test_every_conv_kind_meets_its_bounds_on_the_cpu(coords, kind):
    checks = crosscheck.conv_checks(coords, "cpu", c_in=12, c_out=10, kinds=[kind])
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert not failed, failed
    # fp64, fp32, fp16, bf16 for the four CPU dataflows, each with its determinism check.
    assert len(checks) == 4 * 4 * 2


def test_a_wrong_result_fails_its_check(coords, monkeypatch):
    problem = crosscheck.conv_problem(coords, crosscheck.CONV_KINDS["submanifold k3"], 4, 4)
    honest = crosscheck.ConvProblem.run
    float32_runs = []

    def off_by_a_little(self, device, dtype, config):
        out, grad_feats, grad_weight = honest(self, device, dtype, config)
        if dtype == torch.float32:
            float32_runs.append(config)
            if len(float32_runs) == 1:  # the run under test; the reference run after it is honest
                out = out * (1 + 1e-4)
        return out, grad_feats, grad_weight

    monkeypatch.setattr(crosscheck.ConvProblem, "run", off_by_a_little)
    checks = crosscheck.conv_checks(problem.coords, "cpu", 4, 4, dtypes=[torch.float32], kinds=["submanifold k3"])
    assert not all(c.passed for c in checks if "deterministic" not in c.name)
