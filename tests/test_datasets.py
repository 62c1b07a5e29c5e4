"""SemanticKITTI reading, label mapping, voxelisation, augmentation and corrupt files."""

import numpy as np
import pytest
import torch

from pointsparse.datasets import (IGNORE_INDEX, SemanticKITTI, VoxelConfig, collate, raw_to_train,
                                  train_to_raw)
from pointsparse.datasets.synthetic import LidarConfig, generate_dataset

SMALL_LIDAR = LidarConfig(beams=16, azimuth_steps=360)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    return generate_dataset(root, {0: 2, 8: 1}, seed=3, config=SMALL_LIDAR)


def test_label_mapping_follows_the_official_learning_map():
    raw = np.array([0, 1, 10, 252, 40, 60, 52, 99, 81, 13, 258, 1000], dtype=np.uint32)
    raw[2] |= 7 << 16  # instance bits are ignored
    expected = [IGNORE_INDEX, IGNORE_INDEX, 0, 0, 8, 8, IGNORE_INDEX, IGNORE_INDEX, 18, 4, 3, IGNORE_INDEX]
    assert raw_to_train(raw).tolist() == expected
    assert train_to_raw(np.array([0, 8, 18])).tolist() == [10, 40, 81]


def test_splits_and_sequence_lists(tiny_root):
    assert len(SemanticKITTI(tiny_root, "train")) == 2
    assert len(SemanticKITTI(tiny_root, "val")) == 1
    assert len(SemanticKITTI(tiny_root, [0, 8])) == 3
    with pytest.raises(FileNotFoundError):
        SemanticKITTI(tiny_root, "test")
    with pytest.raises(ValueError, match="unknown split"):
        SemanticKITTI(tiny_root, "training")


def test_voxelisation_keeps_an_inverse_map_back_to_points(tiny_root):
    data = SemanticKITTI(tiny_root, [8], VoxelConfig(0.05, None, augment=False))
    item = data[0]
    points = np.fromfile(item["scan"], dtype=np.float32).reshape(-1, 4)
    voxel_of_point = np.floor(points[:, :3] / 0.05).astype(np.int32)
    torch.testing.assert_close(item["coords"][item["inverse"]], torch.from_numpy(voxel_of_point))
    # The representative point's features sit in its voxel.
    assert torch.equal(torch.floor(item["feats"][:, :3] / 0.05).int(), item["coords"])
    assert item["labels"].shape[0] == item["coords"].shape[0]
    assert item["point_labels"].shape[0] == points.shape[0]


def test_augmentation_is_seeded_and_the_cap_holds(tiny_root):
    config = VoxelConfig(0.05, 500, augment=True)
    a, b = SemanticKITTI(tiny_root, [0], config, seed=1), SemanticKITTI(tiny_root, [0], config, seed=1)
    torch.testing.assert_close(a[0]["feats"], b[0]["feats"])
    assert a[0]["coords"].shape[0] == 500
    b.set_epoch(1)
    assert not torch.equal(a[0]["feats"], b[0]["feats"])
    # Rotation, scale and flips keep ranges within the scale bounds.
    plain = SemanticKITTI(tiny_root, [0], VoxelConfig(0.05, None, augment=False))[0]["feats"]
    radius = plain[:, :2].norm(dim=1).max()
    assert a[0]["feats"][:, :2].norm(dim=1).max() <= radius * 1.05 + 1e-4


def test_missing_labels_mean_unlabeled(tiny_root, tmp_path):
    target = tmp_path / "sequences" / "11" / "velodyne"
    target.mkdir(parents=True)
    (target / "000000.bin").write_bytes((tiny_root / "sequences/08/velodyne/000000.bin").read_bytes())
    item = SemanticKITTI(tmp_path, "test", VoxelConfig(augment=False))[0]
    assert bool((item["labels"] == IGNORE_INDEX).all())


def test_collate_batches_scans(tiny_root):
    data = SemanticKITTI(tiny_root, [0], VoxelConfig(0.05, 300, augment=True))
    batch = collate([data[0], data[1]])
    assert batch["input"].coords[:, 0].unique().tolist() == [0, 1]
    assert batch["labels"].shape[0] == 600 and batch["num_voxels"] == [300, 300]


@pytest.mark.parametrize("what,size,message", [
    ("bin", 17, "not a multiple of 16"),
    ("label", 6, "not a multiple of 4"),
    ("label", 8, "2 labels for"),
])
def test_corrupt_files_raise_with_their_name(tiny_root, tmp_path, what, size, message):
    folder = tmp_path / "sequences" / "00"
    (folder / "velodyne").mkdir(parents=True)
    (folder / "labels").mkdir()
    points = np.zeros((4, 4), dtype=np.float32)
    points.tofile(folder / "velodyne" / "000000.bin")
    np.zeros(4, dtype=np.uint32).tofile(folder / "labels" / "000000.label")
    path = folder / ("velodyne/000000.bin" if what == "bin" else "labels/000000.label")
    path.write_bytes(b"\0" * size)
    with pytest.raises(ValueError, match=message) as error:
        SemanticKITTI(tmp_path, [0])[0]
    assert str(path) in str(error.value)
