"""MinkUNet can fit the labelled real scan (07/000964) it is trained on: the end-to-end check that
convolution, kernel maps, transposed convs and concatenation carry gradients correctly."""

import pytest
import torch

from pointsparse.datasets import CLASS_NAMES, SemanticKITTI, VoxelConfig, collate
from pointsparse.metrics import ConfusionMatrix
from pointsparse.models import build_model

from helpers import SHARED_DATA

MAX_STEPS = 300


@pytest.mark.slow
def test_minkunet_overfits_a_real_scan():
    root = SHARED_DATA / "semantickitti"
    if not (root / "sequences/07/labels/000964.label").exists():
        pytest.skip("labelled real scan not present")
    torch.manual_seed(0)
    batch = collate([SemanticKITTI(root, [7], VoxelConfig(0.05, None, augment=False))[0]])
    model = build_model("minkunet18", num_classes=len(CLASS_NAMES), cr=0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    miou = 0.0
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss = loss_fn(model(batch["input"]), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(batch["input"]).argmax(1)[batch["inverse"][0]]
            matrix = ConfusionMatrix(len(CLASS_NAMES))
            matrix.update(pred, batch["point_labels"][0])
            miou = matrix.miou(present_only=True)
            if miou >= 0.9:
                break
    assert miou >= 0.9, f"mIoU over present classes {miou:.3f} after {step} steps"
