"""SemanticKITTI label ids: the official 19-class learning map and its inverse.

Training labels are ``learning_map[raw] - 1`` in ``0 .. 18`` with :data:`IGNORE_INDEX` for the
official class 0 (unlabeled, outlier, other-structure, other-object), the convention of SPVNAS and
mmdetection3d with the official grouping (moving-* merged into their static classes).
"""

import numpy as np

IGNORE_INDEX = 255

CLASS_NAMES = (
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
    "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
    "terrain", "pole", "traffic-sign",
)
NUM_CLASSES = len(CLASS_NAMES)

# raw id -> official class (0 = ignored), verbatim from semantic-kitti.yaml.
LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
# official class -> raw id, for writing predictions.
LEARNING_MAP_INV = {0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44,
                    11: 48, 12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81}

_LUT_SIZE = 1 << 16


def _train_lut() -> np.ndarray:
    # Raw ids missing from the map count as unlabeled, as in the official evaluator.
    lut = np.full(_LUT_SIZE, IGNORE_INDEX, dtype=np.int64)
    for raw, official in LEARNING_MAP.items():
        lut[raw] = official - 1 if official > 0 else IGNORE_INDEX
    return lut


TRAIN_LUT = _train_lut()


def raw_to_train(labels: np.ndarray) -> np.ndarray:
    """uint32 SemanticKITTI labels [N] (semantic in the low 16 bits) -> int64 train ids [N]."""
    return TRAIN_LUT[labels.astype(np.uint32) & 0xFFFF]


def train_to_raw(train_ids: np.ndarray) -> np.ndarray:
    """int train ids [N] in 0 .. 18 -> uint32 raw SemanticKITTI ids [N] (instance bits 0)."""
    lut = np.array([LEARNING_MAP_INV[c + 1] for c in range(NUM_CLASSES)], dtype=np.uint32)
    return lut[np.asarray(train_ids)]
