"""The SemanticKITTI dataset: scans, labels, splits, voxelisation, augmentation and collation.

Layout: ``root/sequences/XX/velodyne/NNNNNN.bin`` (float32 x, y, z, remission) and, where labelled,
``root/sequences/XX/labels/NNNNNN.label`` (uint32, semantic id in the low 16 bits). A scan without a
label file is unlabeled (all points ignored; fine for inference).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pointsparse.quantize import sparse_collate, sparse_quantize
from pointsparse.tensor import SparseTensor

from .labels import IGNORE_INDEX, raw_to_train

SPLITS = {
    "train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10),
    "val": (8,),
    "test": tuple(range(11, 22)),
}


@dataclass(frozen=True)
class VoxelConfig:
    """How a scan becomes voxels. ``max_voxels`` keeps a random subset (training); None keeps all."""

    voxel_size: float = 0.05
    max_voxels: Optional[int] = 80000
    augment: bool = True


def read_points(path: Path) -> np.ndarray:
    """float32 [N, 4] (x, y, z, remission); ValueError naming the file when its size is not N * 16."""
    size = path.stat().st_size
    if size % 16:
        raise ValueError(f"{path}: {size} bytes is not a multiple of 16 (float32 x, y, z, remission)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_labels(path: Path, num_points: int) -> np.ndarray:
    """uint32 [N] labels; ValueError naming the file on a bad size or a count other than num_points."""
    size = path.stat().st_size
    if size % 4:
        raise ValueError(f"{path}: {size} bytes is not a multiple of 4 (uint32 labels)")
    labels = np.fromfile(path, dtype=np.uint32)
    if labels.shape[0] != num_points:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {num_points} points")
    return labels


def resolve_sequences(split: Union[str, Sequence[Union[int, str]]]) -> List[str]:
    """'train' / 'val' / 'test' or explicit sequence numbers -> two-digit sequence names."""
    if isinstance(split, str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)} or a list of sequences")
        return [f"{s:02d}" for s in SPLITS[split]]
    return [f"{int(s):02d}" for s in split]


def augment_points(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation about z in [0, 2pi), isotropic scale in [0.95, 1.05], flips of x and y (p = 0.5)."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    transform = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) * rng.uniform(0.95, 1.05)
    flips = np.where(rng.random(2) < 0.5, -1.0, 1.0)
    transform[:, :2] *= flips  # flip x and / or y after rotating
    out = points.copy()
    out[:, :3] = points[:, :3] @ transform.T.astype(np.float32)
    return out


class SemanticKITTI(Dataset):
    """Scans of the given split or sequences under ``root``, voxelised on access.

    An item is a dict: ``coords`` int32 [M, 3] voxel coordinates, ``feats`` float32 [M, 4] (x, y, z,
    remission of one point per voxel, after augmentation), ``labels`` int64 [M] (train ids, 255 =
    ignore), ``inverse`` int64 [N] (voxel of each point), ``point_labels`` int64 [N], ``scan`` path.
    Augmentation and the voxel cap draw from a generator seeded by (seed, epoch, index).
    """

    def __init__(self, root: Union[str, Path], split: Union[str, Sequence] = "train",
                 config: VoxelConfig = VoxelConfig(), seed: int = 0):
        self.root = Path(root)
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.scans: List[Path] = []
        for sequence in resolve_sequences(split):
            folder = self.root / "sequences" / sequence / "velodyne"
            if folder.is_dir():
                self.scans.extend(sorted(folder.glob("*.bin")))
        if not self.scans:
            sequences = ",".join(resolve_sequences(split))
            raise FileNotFoundError(f"no scans under {self.root}/sequences/{{{sequences}}}/velodyne")

    def __len__(self) -> int:
        return len(self.scans)

    def set_epoch(self, epoch: int) -> None:
        """Makes augmentation differ per epoch while staying reproducible."""
        self.epoch = epoch

    def label_path(self, scan: Path) -> Path:
        return scan.parent.parent / "labels" / (scan.stem + ".label")

    def __getitem__(self, index: int) -> Dict[str, object]:
        scan = self.scans[index]
        points = read_points(scan)
        label_file = self.label_path(scan)
        if label_file.exists():
            point_labels = raw_to_train(read_labels(label_file, points.shape[0]))
        else:
            point_labels = np.full(points.shape[0], IGNORE_INDEX, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.config.augment:
            points = augment_points(points, rng)
        coords, index_of_voxel, inverse = sparse_quantize(points[:, :3], self.config.voxel_size,
                                                          return_index=True, return_inverse=True)
        cap = self.config.max_voxels
        if cap is not None and coords.shape[0] > cap:
            keep = np.sort(rng.choice(coords.shape[0], cap, replace=False))
            coords, index_of_voxel = coords[keep], index_of_voxel[keep]
        return {
            "coords": torch.from_numpy(coords),
            "feats": torch.from_numpy(points[index_of_voxel]),
            "labels": torch.from_numpy(point_labels[index_of_voxel]),
            "inverse": torch.from_numpy(inverse),
            "point_labels": torch.from_numpy(point_labels),
            "scan": str(scan),
        }


def collate(items: List[Dict[str, object]]) -> Dict[str, object]:
    """A batch: ``input`` SparseTensor (batch index prepended), ``labels`` int64 [sum M], and the
    per-scan ``inverse`` / ``point_labels`` / ``scan`` lists (for mapping predictions back to points)."""
    tensors = [SparseTensor(item["feats"], torch.cat([torch.zeros(item["coords"].shape[0], 1, dtype=torch.int32),
                                                      item["coords"]], 1)) for item in items]
    return {
        "input": sparse_collate(tensors),
        "labels": torch.cat([item["labels"] for item in items]),
        "num_voxels": [item["coords"].shape[0] for item in items],
        "inverse": [item["inverse"] for item in items],
        "point_labels": [item["point_labels"] for item in items],
        "scan": [item["scan"] for item in items],
    }
