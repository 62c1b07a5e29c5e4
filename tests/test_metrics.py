"""mIoU as the official evaluator computes it, on hand-computed cases."""

import pytest
import torch

from pointsparse.metrics import ConfusionMatrix


def test_hand_computed_iou():
    cm = ConfusionMatrix(3)
    # gt:   0 0 0 1 1 2 255
    # pred: 0 0 1 1 2 2 0
    cm.update(torch.tensor([0, 0, 1, 1, 2, 2, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 255]))
    # class 0: tp 2, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/3; class 2: tp 1, fp 1, fn 0 -> 1/2
    torch.testing.assert_close(cm.iou(), torch.tensor([2 / 3, 1 / 3, 1 / 2], dtype=torch.float64))
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert cm.accuracy() == pytest.approx(4 / 6)


def test_absent_class_counts_as_zero_unless_present_only():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert cm.miou() == pytest.approx(2 / 3)
    assert cm.miou(present_only=True) == pytest.approx(1.0)


def test_accumulates_over_scans_not_per_scan_means():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0] * 9 + [1]), torch.tensor([0] * 10))
    cm.update(torch.tensor([1]), torch.tensor([1]))
    # class 0: tp 9, fn 1 -> 0.9; class 1: tp 1, fp 1 -> 0.5
    assert cm.miou() == pytest.approx((0.9 + 0.5) / 2)


def test_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="class ids"):
        ConfusionMatrix(2).update(torch.tensor([2]), torch.tensor([0]))
