"""The synthetic LiDAR scenes: layout, determinism and statistics close to real scans."""

import numpy as np
import pytest

import pointsparse as ps
from pointsparse.datasets import NUM_CLASSES, raw_to_train, read_labels, read_points
from pointsparse.datasets.synthetic import LidarConfig, generate_dataset, make_scene, scan

from helpers import SHARED_DATA, load_scan

SMALL = LidarConfig(beams=16, azimuth_steps=360)


def test_writes_the_semantickitti_layout(tmp_path):
    generate_dataset(tmp_path, {3: 2}, seed=1, config=SMALL)
    folder = tmp_path / "sequences" / "03"
    for name in ("poses.txt", "times.txt", "calib.txt", "velodyne/000001.bin", "labels/000001.label"):
        assert (folder / name).exists(), name
    points = read_points(folder / "velodyne" / "000001.bin")
    labels = read_labels(folder / "labels" / "000001.label", points.shape[0])
    assert points.dtype == np.float32 and points.shape[1] == 4
    assert np.loadtxt(folder / "poses.txt").shape == (2, 12)
    assert "Tr:" in (folder / "calib.txt").read_text()
    instances = labels >> 16
    things = np.isin(labels & 0xFFFF, [10, 18, 30, 31, 252, 253, 254, 258])
    assert (instances[things] > 0).all() and (instances[~things] == 0).all()


def test_is_deterministic_per_seed(tmp_path):
    a = generate_dataset(tmp_path / "a", {0: 1}, seed=5, config=SMALL)
    b = generate_dataset(tmp_path / "b", {0: 1}, seed=5, config=SMALL)
    c = generate_dataset(tmp_path / "c", {0: 1}, seed=6, config=SMALL)
    scan_path = "sequences/00/velodyne/000000.bin"
    assert (a / scan_path).read_bytes() == (b / scan_path).read_bytes()
    assert (a / scan_path).read_bytes() != (c / scan_path).read_bytes()


def class_mix(labels: np.ndarray) -> np.ndarray:
    train = raw_to_train(labels)
    train = train[train != 255]
    return np.bincount(train, minlength=NUM_CLASSES) / train.shape[0]


def test_statistics_are_close_to_a_real_scan():
    real_points = load_scan("semantickitti/sequences/07/velodyne/000964.bin")
    real_labels = np.fromfile(SHARED_DATA / "semantickitti/sequences/07/labels/000964.label", dtype=np.uint32)
    counts, voxels, mixes = [], [], []
    for seed in range(3):
        scene = make_scene(np.random.default_rng([seed, 0]))
        points, labels = scan(scene, 10, LidarConfig(), np.random.default_rng([seed, 0, 10]))
        counts.append(points.shape[0])
        voxels.append(ps.sparse_quantize(points[:, :3], 0.05).shape[0])
        mixes.append(class_mix(labels))
    real_voxels = ps.sparse_quantize(real_points, 0.05).shape[0]
    assert np.mean(counts) == pytest.approx(real_points.shape[0], rel=0.15)
    assert np.mean(voxels) == pytest.approx(real_voxels, rel=0.2)
    total_variation = 0.5 * np.abs(np.mean(mixes, 0) - class_mix(real_labels)).sum()
    assert total_variation < 0.35
