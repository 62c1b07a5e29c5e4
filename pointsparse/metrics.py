"""Segmentation metrics as the official SemanticKITTI evaluator computes them.

A confusion matrix ``conf[pred, gt]`` accumulates over all points of all scans; points whose ground
truth is the ignore label are dropped. ``IoU_c = tp / (tp + fp + fn + 1e-15)``; the mean runs over
all classes, a class absent from both ground truth and predictions counting as 0 (official), or
over the classes present in the ground truth only (``present_only``).
"""

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class ConfusionMatrix:
    num_classes: int
    ignore_index: int = 255
    matrix: Tensor = field(init=False)  # int64 [C, C], rows = prediction, columns = ground truth

    def __post_init__(self):
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """pred, gt: int [N] class ids; gt == ignore_index is skipped."""
        keep = gt != self.ignore_index
        pred, gt = pred[keep].long().cpu(), gt[keep].long().cpu()
        if bool(((pred < 0) | (pred >= self.num_classes)).any() or ((gt < 0) | (gt >= self.num_classes)).any()):
            raise ValueError(f"class ids must be in [0, {self.num_classes}) or the ignore index")
        self.matrix += torch.bincount(pred * self.num_classes + gt,
                                      minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """float64 [C] per-class IoU."""
        tp = self.matrix.diag().double()
        fp = self.matrix.sum(1).double() - tp
        fn = self.matrix.sum(0).double() - tp
        return tp / (tp + fp + fn + 1e-15)

    def miou(self, present_only: bool = False) -> float:
        iou = self.iou()
        if present_only:
            present = self.matrix.sum(0) > 0
            return float(iou[present].mean()) if bool(present.any()) else 0.0
        return float(iou.mean())

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum() / total) if total > 0 else 0.0

    def table(self, class_names: Sequence[str]) -> str:
        """Per-class IoU table with the official mIoU and accuracy."""
        iou = self.iou()
        gt_points = self.matrix.sum(0)
        lines = [f"{'class':<16}{'IoU %':>8}{'gt points':>12}"]
        lines += [f"{name:<16}{100 * float(v):>8.2f}{int(n):>12}" for name, v, n in zip(class_names, iou, gt_points)]
        lines.append(f"{'mIoU (all)':<16}{100 * self.miou():>8.2f}")
        lines.append(f"{'mIoU (present)':<16}{100 * self.miou(present_only=True):>8.2f}")
        lines.append(f"{'accuracy':<16}{100 * self.accuracy():>8.2f}")
        return "\n".join(lines)
