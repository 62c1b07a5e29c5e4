"""MinkUNet models: registry, widths, forward on a real scan."""

import pytest
import torch

from pointsparse import SparseTensor
from pointsparse.models import MODELS, build_model

from helpers import load_scan, with_batch


def test_registry_and_parameter_counts():
    assert set(MODELS) == {"minkunet18", "minkunet34"}
    m18 = build_model("minkunet18", num_classes=19, cr=1.0)
    m34 = build_model("minkunet34", num_classes=19, cr=1.0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(m18) == pytest.approx(21.7e6, rel=0.02)  # SPVNAS MinkUNet at cr 1.0: 21.7 M
    assert count(m34) > count(m18)
    assert count(build_model("minkunet18", cr=0.5)) == pytest.approx(count(m18) / 4, rel=0.05)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("pointnet")


def test_forward_and_backward_on_a_real_scan():
    points = load_scan("semantickitti/sequences/07/velodyne/000964.bin")
    import pointsparse as ps

    coords, index = ps.sparse_quantize(points, 0.05, return_index=True)
    xyz = torch.from_numpy(points[index])
    x = SparseTensor(torch.cat([xyz, torch.ones(xyz.shape[0], 1)], 1), with_batch(coords))  # x, y, z, remission
    model = build_model("minkunet18", num_classes=19, cr=0.125)
    logits = model(x)
    assert logits.shape == (coords.shape[0], 19) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
