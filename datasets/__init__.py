"""Data sets for pointsparse models (installed as ``pointsparse.datasets``)."""

from .labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, raw_to_train, train_to_raw
from .semantic_kitti import SPLITS, SemanticKITTI, VoxelConfig, collate, read_labels, read_points

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "SPLITS", "SemanticKITTI", "VoxelConfig",
           "collate", "raw_to_train", "read_labels", "read_points", "train_to_raw"]
