import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pointsparse  # noqa: F401  (registers the ops)
from pointsparse.extras import extra_unavailable_reason, import_extra


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


def require_extra(name: str):
    """The optional extra's module (``pointsparse.extras.EXTRAS``), used for real where it loads;
    otherwise the test is skipped with the reason, whatever the import raised (pytest.importorskip
    skips only a missing module, not e.g. open3d's ImportError for a missing libusb)."""
    reason = extra_unavailable_reason(name, "This test")
    if reason is not None:
        pytest.skip(reason)
    return import_extra(name, "This test")


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
