"""The benchmark suites run end to end on a small scan and write their JSON (timings not checked)."""

import json

import numpy as np
import pytest
import torch

import pointsparse as ps
from pointsparse.bench.__main__ import main

from helpers import DEVICES


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    """A KITTI-format .bin of 20,000 points on a few surfaces (float32 x, y, z, remission)."""
    rng = np.random.default_rng(0)
    ground = np.c_[rng.uniform(-10, 10, (15000, 2)), rng.normal(-1.7, 0.02, 15000)]
    wall = np.c_[rng.uniform(-10, 10, 5000), np.full(5000, 6.0), rng.uniform(-1.7, 2, 5000)]
    points = np.c_[np.r_[ground, wall], rng.uniform(0, 1, 20000)].astype(np.float32)
    path = tmp_path_factory.mktemp("scan") / "000000.bin"
    points.tofile(path)
    return path


@pytest.mark.parametrize("device", DEVICES)
def test_conv_bench_times_every_dataflow_against_the_naive_baseline(small_scan, tmp_path, device):
    out = tmp_path / "conv.json"
    assert main(["conv", "--scan", str(small_scan), "--voxel-size", "0.2", "--repeats", "1",
                 "--device", device, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["conv_device"] == device
    for rows in record["results"].values():
        assert rows["naive torch"]["median_ms"] > 0
        assert rows["pointsparse gather_gemm_scatter"]["median_ms"] > 0
        assert ("pointsparse fused" in rows) == (device == "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_kmap_bench_runs(small_scan, tmp_path, device):
    out = tmp_path / "kmap.json"
    assert main(["kmap", "--scan", str(small_scan), "--voxel-size", "0.2", "--repeats", "1",
                 "--device", device, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"]


def test_conv_bench_on_cuda_without_a_gpu_says_so(small_scan, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="CUDA device"):
        main(["conv", "--scan", str(small_scan), "--device", "cuda", "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("device", DEVICES)
def test_grouping_bench_reports_every_strategy_with_its_accounting(small_scan, tmp_path, device):
    out = tmp_path / "grouping.json"
    assert main(["grouping", "--scan", str(small_scan), "--voxel-size", "0.4", "--repeats", "1",
                 "--device", device, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 7  # 4 submanifold + 3 downsampling layers
    for layer in results:
        for strategy in ("separate", "symmetric", "fixed (quads)", "dense", "adaptive"):
            record = layer[strategy]
            assert record["computed_macs"] >= record["useful_macs"] > 0
            assert record["forward"]["median_ms"] > 0 and record["ratio_vs_separate"]["forward"] > 0
        assert layer["separate"]["redundancy"] == 0
        assert ("fused dataflow" in layer) == (device == "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_host_bench_times_every_dataflow_with_and_without_grad(small_scan, tmp_path, device):
    out = tmp_path / "host.json"
    assert main(["host", "--scan", str(small_scan), "--repeats", "1", "--calls", "5", "--device", device,
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {s.dataflow.value for s in ps.dataflows.dataflows_for(device)}
    for record in results.values():
        for mode in ("no_grad", "grad"):
            times = record[mode]
            assert times["conv3d_us"] > 0 and times["module_us"] > 0 and times["dataflow_us"] > 0
            assert times["glue_us"] == pytest.approx(times["conv3d_us"] - times["dataflow_us"])


@pytest.mark.parametrize("device", DEVICES)
def test_implicit_bench_reports_redundancy_and_times(small_scan, tmp_path, device):
    out = tmp_path / "implicit.json"
    assert main(["implicit", "--scan", str(small_scan), "--voxel-size", "0.4", "--repeats", "1",
                 "--device", device, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 10  # 4 submanifold, 3 k2s2 and 3 k3s2 layers
    for layer in results:
        assert len(layer["redundancy"]) == 4 * 2 * 4
        assert all(0 <= v < 1 for v in layer["redundancy"].values())
        assert layer["timings"]["implicit sorted split 2"]["ratio_vs_implicit_sorted"]["forward"] == 1
    (summary,) = json.loads(out.read_text())["summary"]
    for name, total in summary["totals"].items():
        summed = sum(layer["timings"][name]["forward_backward"]["median_ms"] for layer in results)
        assert total["forward_backward"]["median_ms"] == pytest.approx(summed)
    reference = summary["totals"]["implicit sorted split 2"]
    gather = summary["totals"]["gather-GEMM-scatter"]
    assert gather["ratio_vs_implicit_sorted"]["forward"] == pytest.approx(
        reference["forward"]["median_ms"] / gather["forward"]["median_ms"])


def test_implicit_bench_times_reduced_precision_on_cuda_only(small_scan, tmp_path):
    with pytest.raises(SystemExit, match="for CUDA"):
        main(["implicit", "--scan", str(small_scan), "--dtype", "float16", "--out", str(tmp_path / "i.json")])
    if torch.cuda.is_available():
        out = tmp_path / "implicit_half.json"
        assert main(["implicit", "--scan", str(small_scan), "--voxel-size", "0.4", "--repeats", "1", "--device", "cuda",
                     "--dtype", "float16", "--out", str(out)]) == 0
        assert json.loads(out.read_text())["dtype"] == "float16"


def test_minkunet_bench_times_a_step_and_attributes_it(small_scan, tmp_path):
    out = tmp_path / "minkunet.json"
    assert main(["minkunet", "--scan", str(small_scan), "--voxel-size", "0.2", "--cr", "0.125", "--repeats", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    ours = record["timings"]["pointsparse"]
    # One sample each: their order is not asserted (a 0.2 s stall of the machine once made this
    # tiny scan's inference pass slower than its training step).
    assert ours["train"]["median_s"] > 0 and ours["inference"]["median_s"] > 0
    assert ours["train"]["minor_faults"] >= 0 and ours["inference"]["sys_s"] >= 0
    train, inference = record["breakdown"]["train"], record["breakdown"]["inference"]
    for step in (train, inference):
        # Self times plus the untraced rest add up to the step: nothing counted twice.
        assert sum(step["categories_ms"].values()) == pytest.approx(step["step_ms"], rel=0.15)
        assert step["categories_ms"]["kernel maps"] > 0
        assert step["categories_ms"]["head (linear)"] > 0  # spnn.Linear's fused op, found by its range
    # In eval mode the norms run inside the convs (their epilogue): no batch-norm op of their own.
    assert train["categories_ms"]["batch norm"] > 0 and "batch norm" not in inference["categories_ms"]
    layers = train["layers_ms"]
    assert len(layers) == 49  # every SparseConv3d of MinkUNet18
    assert all(row["forward"] > 0 and row["weight grad"] > 0 for row in layers.values())
    # The stem's input needs no gradient (no input-gradient conv runs); every later layer's does.
    assert layers["stem.0.0"]["input grad"] < 0.5 * layers["stem.0.0"]["weight grad"]
    assert all(row["input grad"] > 0 for name, row in layers.items() if name != "stem.0.0")
    assert all(row["input grad"] == row["weight grad"] == 0 for row in inference["layers_ms"].values())
    assert ("spconv" in record["timings"]) == spconv_importable()


def spconv_importable() -> bool:
    from pointsparse.bench.spconv_baseline import spconv_available
    return spconv_available()
