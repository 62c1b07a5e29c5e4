"""The train / eval / predict commands on a tiny generated data set, resume and 2-process DDP."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from helpers import require_extra
from pointsparse.cli import main
from pointsparse.datasets.synthetic import LidarConfig, generate_dataset

TINY = ["--cr", "0.125", "--batch-size", "1", "--max-voxels", "1500", "--workers", "0",
        "--train-split", "0", "--val-split", "8", "--lr", "0.05"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("kitti"), {0: 2, 8: 1}, seed=2,
                            config=LidarConfig(beams=16, azimuth_steps=360))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_train_eval_predict(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(root), "--out-dir", str(out), "--epochs", "1", *TINY]) == 0
    assert (out / "last.pt").exists() and not (out / "last.pt.tmp").exists()
    assert "mIoU (all)" in capsys.readouterr().out
    assert main(["eval", str(out / "last.pt"), "--split", "8", "--workers", "0"]) == 0
    assert "road" in capsys.readouterr().out
    assert main(["predict", str(out / "last.pt"), "--split", "8", "--out", str(tmp_path / "pred")]) == 0
    written = tmp_path / "pred" / "sequences" / "08" / "predictions" / "000000.label"
    points = np.fromfile(root / "sequences" / "08" / "velodyne" / "000000.bin", dtype=np.float32)
    labels = np.fromfile(written, dtype=np.uint32)
    assert labels.shape[0] == points.shape[0] // 4
    assert set(np.unique(labels)) <= {10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81}


def test_resume_continues_exactly(root, tmp_path):
    straight = tmp_path / "straight"
    main(["train", "--data-root", str(root), "--out-dir", str(straight), "--epochs", "2", *TINY])
    # Interrupt after epoch 1: rerun epoch 1 only, then resume for epoch 2.
    interrupted = tmp_path / "interrupted"
    state_1 = _train_one_epoch_of_two(root, interrupted)
    assert state_1["epoch"] == 0
    main(["train", "--data-root", str(root), "--out-dir", str(interrupted), "--epochs", "2", "--resume", *TINY])
    for name, value in weights(straight / "last.pt").items():
        torch.testing.assert_close(weights(interrupted / "last.pt")[name], value, msg=name)


def _train_one_epoch_of_two(root, out):
    """Runs epoch 1 of a 2-epoch schedule and stops, as a crash after the first checkpoint would."""
    from pointsparse import training

    original = training.evaluate
    calls = []

    def stop_after_first(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    training.evaluate = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["train", "--data-root", str(root), "--out-dir", str(out), "--epochs", "2", *TINY])
    finally:
        training.evaluate = original
    return torch.load(out / "last.pt", weights_only=True)


def _ddp_worker(rank, world, port, root, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    main(["train", "--data-root", str(root), "--out-dir", str(out), "--epochs", "1", "--device", "cpu", *TINY])


def test_two_process_ddp_step_on_cpu(root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, root, tmp_path / "ddp"), nprocs=2, join=True)
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and "miou" in state


def test_predict_writes_coloured_ply_through_open3d(root, tmp_path):
    o3d = require_extra("open3d")
    out = tmp_path / "run"
    main(["train", "--data-root", str(root), "--out-dir", str(out), "--epochs", "1", *TINY])
    main(["predict", str(out / "last.pt"), "--split", "8", "--out", str(tmp_path / "pred"), "--ply"])
    ply, = (tmp_path / "pred").rglob("*.ply")
    cloud = o3d.io.read_point_cloud(str(ply))
    points = np.fromfile(root / "sequences" / "08" / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    assert np.asarray(cloud.points).shape == (points.shape[0], 3)
    assert np.asarray(cloud.colors).shape == (points.shape[0], 3) and np.asarray(cloud.colors).max() <= 1.0


def test_predict_one_scan_file_in_each_format(root, tmp_path, capsys):
    o3d = require_extra("open3d")
    out = tmp_path / "run"
    main(["train", "--data-root", str(root), "--out-dir", str(out), "--epochs", "1", *TINY])
    scan = root / "sequences" / "08" / "velodyne" / "000000.bin"
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
    assert main(["predict", str(out / "last.pt"), "--scan", str(scan), "--out", str(tmp_path / "one")]) == 0
    labels = np.fromfile(tmp_path / "one" / "000000.label", dtype=np.uint32)
    assert labels.shape == (points.shape[0],)
    # The same scan as a .pcd with intensity, predicted into a coloured .ply: the same labels.
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(points[:, :3])
    cloud.point.intensity = o3d.core.Tensor(points[:, 3:])
    o3d.t.io.write_point_cloud(str(tmp_path / "scan.pcd"), cloud)
    assert main(["predict", str(out / "last.pt"), "--scan", str(tmp_path / "scan.pcd"),
                 "--out", str(tmp_path / "scan_pred.ply")]) == 0
    coloured = o3d.io.read_point_cloud(str(tmp_path / "scan_pred.ply"))
    from pointsparse.datasets import raw_to_train
    from pointsparse.datasets.colors import class_colors

    want = class_colors()[raw_to_train(labels)]
    np.testing.assert_allclose(np.asarray(coloured.colors), want, atol=1 / 255)
    assert "wrote" in capsys.readouterr().out
