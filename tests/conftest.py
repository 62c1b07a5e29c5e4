import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pointsparse  # noqa: F401  (registers the ops)


def _shared_data() -> Path:
    """Real-scan fixtures: $POINTSPARSE_SHARED_DATA, else shared/data inside the checkout (an ignored
    copy, which travels to a GPU machine), else ../shared/data beside it."""
    if "POINTSPARSE_SHARED_DATA" in os.environ:
        return Path(os.environ["POINTSPARSE_SHARED_DATA"])
    repo = Path(__file__).resolve().parents[1]
    inside = repo / "shared" / "data"
    return inside if inside.exists() else repo.parent / "shared" / "data"


SHARED_DATA = _shared_data()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


def load_scan(relative: str) -> np.ndarray:
    """xyz float32 [N, 3] of a KITTI .bin under ../shared/data; skips the test when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real scan {path} not present")
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]


def with_batch(coords: np.ndarray, batch: int = 0) -> torch.Tensor:
    """int32 [N, 4] from xyz int32 [N, 3]."""
    xyz = torch.from_numpy(np.ascontiguousarray(coords)).int()
    return torch.cat([torch.full((xyz.shape[0], 1), batch, dtype=torch.int32), xyz], 1)
