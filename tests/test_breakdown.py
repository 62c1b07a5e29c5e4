"""pointsparse.breakdown: a step's time per conv layer and pass, from events of every thread (the
CUDA backward runs on autograd's device thread), GPU time and counts on CUDA."""

import pytest
import torch

from helpers import DEVICES
from pointsparse import SparseTensor
from pointsparse.breakdown import CONV_PARTS, breakdown, count_host_syncs
from pointsparse.models import minkunet18

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_network(device: str):
    torch.manual_seed(0)
    coords = torch.unique(torch.randint(0, 24, (1500, 3), dtype=torch.int32), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1).to(device)
    feats = torch.randn(len(coords), 4, device=device)
    model = minkunet18(in_channels=4, num_classes=5, cr=0.125).to(device).train()
    return model, lambda: SparseTensor(feats, coords)


def train_step(model, make_input):
    model(make_input()).square().mean().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_the_backward_of_every_layer_is_attributed_on_the_host_and_the_gpu(device):
    # On CUDA the backward runs on autograd's device thread (the profiler follows it there; a
    # plain Python thread it would not): the gradient columns prove its events are read.
    model, make_input = small_network(device)
    train_step(model, make_input)  # warm-up
    record = breakdown(model, lambda: train_step(model, make_input), torch.device(device))
    layers = record["layers_ms"]
    assert len(layers) == 49 and all(set(CONV_PARTS) <= set(row) for row in layers.values())
    assert all(row["forward"] > 0 and row["weight grad"] > 0 for row in layers.values())
    assert all(row["input grad"] > 0 for name, row in layers.items() if name != "stem.0.0")
    assert sum(record["categories_ms"].values()) == pytest.approx(record["step_ms"], rel=0.2)
    assert record["kernel_map_builds"] == 18 and record["kernel_maps_ms"] > 0
    if device == "cuda":
        gpu = record["layers_gpu_ms"]
        assert all(row["forward"] > 0 and row["weight grad"] > 0 for row in gpu.values())
        assert record["kernel_launches"] > 49 and record["peak_memory_mib"] > 0
        assert record["gpu_ms"] >= sum(sum(row[p] for p in CONV_PARTS) for row in gpu.values())
    else:
        assert "layers_gpu_ms" not in record and "kernel_launches" not in record


def test_host_syncs_are_not_counted_off_cuda():
    assert count_host_syncs(lambda: torch.ones(1).item(), torch.device("cpu")) is None


@CUDA
def test_host_syncs_are_counted_one_per_synchronising_call():
    x = torch.ones(4, device="cuda")
    assert count_host_syncs(lambda: x.sum() * 2, torch.device("cuda")) == 0
    assert count_host_syncs(lambda: [x.sum().item(), x.cpu(), x.nonzero()], torch.device("cuda")) == 3
    assert torch.cuda.get_sync_debug_mode() == 0  # restored
