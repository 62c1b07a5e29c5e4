"""Class colours of the official SemanticKITTI colour map (converted from its BGR to RGB)."""

import numpy as np

# BGR per training class 0 .. 18, from semantic-kitti.yaml color_map.
_BGR = [[245, 150, 100], [245, 230, 100], [150, 60, 30], [180, 30, 80], [255, 0, 0], [30, 30, 255],
        [200, 40, 255], [90, 30, 150], [255, 0, 255], [255, 150, 255], [75, 0, 75], [75, 0, 175],
        [0, 200, 255], [50, 120, 255], [0, 175, 0], [0, 60, 135], [80, 240, 150], [150, 240, 255],
        [0, 0, 255]]


def class_colors() -> np.ndarray:
    """float64 [19, 3] RGB in [0, 1]."""
    return np.array(_BGR, dtype=np.float64)[:, ::-1] / 255.0
