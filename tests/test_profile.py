"""pointsparse profile and pointsparse.tune on a small synthetic scan: complete and consistent reports,
files and plots, tuning that selects, persists, reloads without measuring and keeps outputs."""

import json

import numpy as np
import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, Dataflow, Grouping
from pointsparse import profiler, tuner
from pointsparse.cli import main
from pointsparse.models import build_model, minkunet18
from pointsparse.profiler import scan_input

from helpers import DEVICES


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    """A synthetic LiDAR scan (KITTI .bin) of a few thousand points."""
    from pointsparse.datasets.synthetic import LidarConfig, make_scene, scan

    rng = np.random.default_rng(3)
    points = scan(make_scene(rng), 0, LidarConfig(beams=16, azimuth_steps=360), rng)[0]
    path = tmp_path_factory.mktemp("scan") / "000000.bin"
    points.astype(np.float32).tofile(path)
    return path


def small_model(device="cpu"):
    torch.manual_seed(0)
    return minkunet18(in_channels=4, num_classes=5, cr=0.125).to(device)


def sample(path, device="cpu"):
    return scan_input(np.fromfile(path, dtype=np.float32).reshape(-1, 4), 0.2, device)


@pytest.mark.parametrize("device", DEVICES)
def test_profile_reports_every_layer_and_strategy_consistently(small_scan, tmp_path, device):
    model = small_model(device)
    report = ps.profile(model, sample(small_scan, device), model_name="tiny", repeats=1, quick=True)
    convs = [m for m in model.modules() if isinstance(m, ps.nn.SparseConv3d)]
    assert len(report.layers) == len(convs)  # each conv runs once per forward
    for layer in report.layers:
        names = {r.strategy for r in layer.results}
        assert {"ggs separate", "ggs dense", "implicit t32 unsorted"} <= names
        assert ("fused" in names) == (device == "cpu")
        assert sum(layer.n_k) == layer.results[0].useful_macs // (layer.c_in * layer.c_out)
        for r in layer.results:
            assert r.computed_macs >= r.useful_macs > 0 and 0 <= r.redundancy < 1
            assert min(r.forward_ms, r.input_grad_ms, r.weight_grad_ms) > 0
            gpu = (r.forward_gpu_ms, r.input_grad_gpu_ms, r.weight_grad_gpu_ms)
            if device == "cuda":  # the kernels of each pass, seen on every thread (the backward's too)
                assert min(gpu) > 0
            else:
                assert gpu == (None, None, None)
        assert layer.best_inference.forward_ms == min(r.forward_ms for r in layer.results)
        assert layer.best_training.training_ms == min(r.training_ms for r in layer.results)
        separate = layer.result("ggs separate")
        assert separate.redundancy == 0 and separate.gemm_calls == sum(1 for n in layer.n_k if n > 0)
    totals = report.totals()
    assert totals["best per layer"]["training_ms"] <= min(t["training_ms"] for t in totals.values())
    written = report.write(tmp_path)
    assert {p.name for p in written} == {"report.json", "report.csv", "time_per_layer.png", "redundancy.png",
                                         "nk_histograms.png"}
    assert all(p.stat().st_size > 0 for p in written)
    record = json.loads((tmp_path / "report.json").read_text())
    assert len(record["layers"]) == len(convs) and "best per layer" in record["totals"]
    assert "forward_gpu_ms" in record["layers"][0]["results"][0]
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert "weight_grad_gpu_ms" in header and ("GPU fwd/in/w ms" in report.table()) == (device == "cuda")


def test_profile_command_writes_the_report(small_scan, tmp_path, capsys):
    out = tmp_path / "profile"
    assert main(["profile", "--scan", str(small_scan), "--model", "minkunet18", "--cr", "0.125", "--out", str(out),
                 "--quick", "--repeats", "1", "--voxel-size", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "best per layer" in printed and "network total" in printed
    for name in ("report.json", "report.csv", "time_per_layer.png", "redundancy.png", "nk_histograms.png"):
        assert (out / name).exists()


def test_profile_command_rejects_bad_arguments(small_scan, tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        main(["profile", "--scan", str(tmp_path / "missing.bin"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown model"):
        main(["profile", "--scan", str(small_scan), "--model", "pointnet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no scans"):
        main(["profile", "--data-root", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown strategy families"):
        main(["profile", "--scan", str(small_scan), "--strategies", "ggs,winograd", "--out", str(tmp_path)])


def test_profile_can_be_restricted_to_families(small_scan):
    report = ps.profile(small_model(), sample(small_scan), repeats=1, quick=True, families=["ggs"])
    assert all(r.strategy.startswith("ggs") for layer in report.layers for r in layer.results)
    assert set(report.end_to_end) == {"tuned (best per layer)", f"single: {min(report.strategies(), key=lambda n: report.totals()[n]['training_ms'])}"}


def test_tune_selects_persists_reloads_and_keeps_outputs(small_scan, tmp_path, monkeypatch):
    x = sample(small_scan)
    model = small_model().eval()
    with torch.no_grad():
        untuned = model(x)
    cache = tmp_path / "tuned.json"
    chosen = ps.tune(model, [x], mode="training", cache_path=cache, repeats=1, quick=True)
    convs = {name for name, m in model.named_modules() if isinstance(m, ps.nn.SparseConv3d)}
    assert set(chosen) == convs
    assert all(dict(model.named_modules())[name].config == config for name, config in chosen.items())
    with torch.no_grad():
        tuned = model(x)
    torch.testing.assert_close(tuned, untuned, rtol=1e-4, atol=1e-4)
    store = json.loads(cache.read_text())
    (key, modes), = store.items()
    assert "torch" in key and "pointsparse" in key and set(modes) == {"training"}
    assert "configs" not in model.state_dict() and all("config" not in k for k in model.state_dict())

    # A second model reuses the file without measuring anything.
    def no_timing(*args, **kwargs):
        raise AssertionError("measured although the choice was cached")

    monkeypatch.setattr(tuner, "time_layer", no_timing)
    again = small_model()
    assert ps.tune(again, [x], mode="training", cache_path=cache, quick=True) == chosen
    with pytest.raises(AssertionError, match="measured"):
        ps.tune(again, [x], mode="training", cache_path=cache, quick=True, force=True)


def test_tune_rejects_bad_arguments(small_scan):
    with pytest.raises(ValueError, match="mode"):
        ps.tune(small_model(), [sample(small_scan)], mode="fastest")
    with pytest.raises(ValueError, match="at least one sample"):
        ps.tune(small_model(), [])


def test_minkunet_takes_a_config_or_a_per_layer_map():
    dense = ConvConfig(dataflow=Dataflow.GATHER_GEMM_SCATTER, grouping=Grouping.DENSE)
    model = minkunet18(in_channels=4, num_classes=5, cr=0.125, config=dense)
    assert all(m.config == dense for m in model.modules() if isinstance(m, ps.nn.SparseConv3d))
    model = build_model("minkunet18", in_channels=4, num_classes=5, cr=0.125, config={"stem.0.0": dense})
    assert model.stem[0][0].config == dense and model.stem[1][0].config == ConvConfig()
    with pytest.raises(ValueError, match="no SparseConv3d named"):
        minkunet18(config={"stem.9": dense})


def test_train_tune_tunes_before_training(tmp_path, capsys):
    from pointsparse.datasets.synthetic import LidarConfig, generate_dataset

    root = generate_dataset(tmp_path / "kitti", {0: 1, 8: 1}, seed=2, config=LidarConfig(beams=16, azimuth_steps=360))
    cache = tmp_path / "tuned.json"
    assert main(["train", "--data-root", str(root), "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--cr",
                 "0.125", "--batch-size", "1", "--max-voxels", "800", "--workers", "0", "--train-split", "0",
                 "--val-split", "8", "--tune", "--tune-cache", str(cache)]) == 0
    assert "tuned" in capsys.readouterr().out and cache.exists()


def test_training_tuning_may_combine_the_fastest_grouping_of_each_pass(small_scan, tmp_path, monkeypatch):
    # Fake timings: DENSE is fastest forward, SYMMETRIC for the input gradient, SEPARATE for the
    # weight gradient, and everything else slower: the tuner combines them per pass.
    fast = {"ggs dense": (1, 9, 9), "ggs symmetric": (9, 1, 9), "ggs separate": (9, 9, 1)}

    def fake_timing(layer, strategy, repeats, gpu_times=True):
        return profiler.Timing(*fast.get(strategy.name, (5, 5, 5)))

    monkeypatch.setattr(tuner, "time_layer", fake_timing)
    model = small_model()
    chosen = ps.tune(model, [sample(small_scan)], mode="training", cache_path=tmp_path / "t.json", quick=True)
    grouping = next(iter(chosen.values())).grouping
    assert (grouping.forward.strategy, grouping.input_grad.strategy, grouping.weight_grad.strategy) == (
        Grouping.DENSE, Grouping.SYMMETRIC, Grouping.SEPARATE)
