"""A stand-in for ``cumm.tensorview`` (spconv's tensor type), installed only where cumm is missing:
detection data pipelines wrap points with ``tv.from_numpy`` before voxelising and call ``.numpy()``
on the results, which torch tensors do here."""

import numpy as np
import torch


def from_numpy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
