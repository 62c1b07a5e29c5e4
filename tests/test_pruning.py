"""2:4 pruning of SparseConv3d: masks and their validator, magnitude and channel-permutation
methods, masked execution through training steps and save/load, compressed storage."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pointsparse as ps
from pointsparse import pruning
from pointsparse import functional as F
from pointsparse.models import minkunet18

from helpers import random_tensor


@settings(max_examples=40, deadline=None)
@given(K=st.integers(1, 5), groups=st.integers(1, 6), c_out=st.integers(1, 6), seed=st.integers(0, 1000),
       permuted=st.booleans())
def test_magnitude_masks_are_2to4_for_any_shape(K, groups, c_out, seed, permuted):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(K, 4 * groups, c_out, generator=gen)
    order = torch.randperm(4 * groups, generator=gen) if permuted else None
    mask = pruning.magnitude_mask(weight, order)
    pruning.check_2to4(mask, order)
    assert mask.sum() == weight.numel() // 2


def test_magnitude_keeps_the_two_largest_of_each_group():
    weight = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(1))
    mask = pruning.magnitude_mask(weight)
    for k in range(3):
        for g in range(2):
            for o in range(5):
                values = weight[k, 4 * g:4 * g + 4, o].abs().tolist()
                largest = sorted(range(4), key=lambda i: -values[i])[:2]
                assert sorted(i for i in range(4) if mask[k, 4 * g + i, o]) == sorted(largest)


@pytest.mark.parametrize("mask,order,error,message", [
    (torch.ones(1, 4, 1, dtype=torch.bool), None, ValueError, "not a 2:4 mask"),
    (torch.tensor([[[True], [False], [False], [False]]]), None, ValueError, "not a 2:4 mask"),
    (torch.ones(1, 4, 1), None, TypeError, "bool"),
    (torch.ones(1, 6, 1, dtype=torch.bool), None, ValueError, "multiple of 4"),
    (torch.tensor([[[True], [True], [False], [False]]]), torch.tensor([0, 0, 1, 2]), ValueError, "permutation"),
])
def test_the_validator_rejects_what_is_not_2to4(mask, order, error, message):
    with pytest.raises(error, match=message):
        pruning.check_2to4(mask, order)


@pytest.mark.parametrize("seed", range(4))
def test_a_channel_order_never_keeps_less_than_the_identity(seed):
    gen = torch.Generator().manual_seed(seed)
    # Channels of alike magnitude sit in the same groups: the identity wastes a lot, swaps recover it.
    weight = torch.randn(27, 16, 8, generator=gen) * torch.tensor([4.0, 4.0, 4.0, 4.0] + [1.0] * 12)[None, :, None]
    order = pruning.search_channel_order(weight, rounds=32, seed=seed)
    identity = pruning.kept_magnitude(weight, pruning.magnitude_mask(weight))
    permuted = pruning.kept_magnitude(weight, pruning.magnitude_mask(weight, order))
    assert sorted(order.tolist()) == list(range(16)) and permuted >= identity
    assert permuted > identity  # the skewed weights leave room for a better order


def test_a_permuted_layer_computes_its_masked_weight():
    x = random_tensor(num_points=80, channels=8, seed=2, dtype=torch.float32)
    layer = ps.nn.SparseConv3d(8, 6, 3)
    dense = layer.weight.detach().clone()
    pruning.prune_layer(layer, "permute", search_rounds=8)
    pruning.check_2to4(pruning.weight_mask(layer), pruning.channel_order(layer))
    expected = F.conv3d(x, dense * pruning.weight_mask(layer)).feats
    torch.testing.assert_close(layer(x).feats, expected)


def test_pruned_weights_stay_zero_through_training_steps():
    x = random_tensor(num_points=80, channels=8, seed=3, dtype=torch.float32)
    layer = ps.nn.SparseConv3d(8, 8, 3)
    pruning.prune_layer(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        optimizer.zero_grad()
        layer(x).feats.square().sum().backward()
        optimizer.step()
    assert bool((layer.weight[~pruning.weight_mask(layer)] == 0).all())
    assert bool((layer.weight[pruning.weight_mask(layer)] != 0).all())


def test_a_fresh_model_loads_a_pruned_checkpoint_and_compressed_storage_round_trips(tmp_path):
    torch.manual_seed(0)
    model = minkunet18(in_channels=4, num_classes=5, cr=0.25)
    report = pruning.prune_model(model, "permute", search_rounds=4)
    assert [r.name for r in report if not r.pruned] == ["stem.0.0", "stem.1.0"]
    path = tmp_path / "pruned.pt"
    torch.save(pruning.compress_state_dict(model.state_dict()), path)
    blob = torch.load(path, weights_only=True)
    state = pruning.decompress_state_dict(blob)
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    fresh = minkunet18(in_channels=4, num_classes=5, cr=0.25)
    fresh.load_state_dict(state)
    x = random_tensor(num_points=500, channels=4, span=20, seed=4, dtype=torch.float32)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    pruned_layer = fresh.down[0][0][0]
    pruning.check_2to4(pruning.weight_mask(pruned_layer), pruning.channel_order(pruned_layer))
    dense_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.endswith("weight"))
    stored = sum(v["values"].numel() * 4 + v["positions"].numel() if isinstance(v, dict) and "values" in v
                 else (v.numel() * v.element_size() if torch.is_tensor(v) and k.endswith("weight") else 0)
                 for k, v in blob.items())
    assert stored < 0.8 * dense_bytes


def test_prune_model_reports_skips_and_rejects_bad_methods():
    model = torch.nn.Sequential(ps.nn.SparseConv3d(6, 8, 3), ps.nn.SparseConv3d(8, 8, 3))
    report = pruning.prune_model(model, include=["*"], exclude=[])
    assert [(r.pruned, r.reason) for r in report] == [(False, "C_in not a multiple of 4"), (True, "")]
    assert 0.5 < report[1].kept_magnitude < 1.0
    with pytest.raises(ValueError, match="method"):
        pruning.prune_model(model, "learned-by-magic")
    with pytest.raises(ValueError, match="mask shape"):
        pruning.set_weight_mask(model[1], torch.ones(27, 4, 8, dtype=torch.bool), torch.arange(4))


def test_learned_masks_train_their_logits_only_and_end_2to4():
    torch.manual_seed(0)
    x = random_tensor(num_points=200, channels=8, span=10, seed=5, dtype=torch.float32)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.ReLU(), ps.nn.SparseConv3d(8, 4, 3))
    dense = [m.weight.detach().clone() for m in model if isinstance(m, ps.nn.SparseConv3d)]
    logits = pruning.attach_learned_masks(model, include=["*"], exclude=[])
    assert len(logits) == 2 and all(not p.requires_grad for n, p in model.named_parameters() if "logits" not in n)
    target = torch.randn(x.coords.shape[0], 4)
    optimizer = torch.optim.Adam(logits, lr=0.05)
    before = [l.detach().clone() for l in logits]
    for _ in range(5):
        optimizer.zero_grad()
        loss = (model(x).feats - target).square().mean()
        loss.backward()
        assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in logits)
        assert all(pruning.original_weight(m).grad is None for m in model if isinstance(m, ps.nn.SparseConv3d))
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, logits))
    report = pruning.finalize_learned_masks(model)
    assert len(report) == 2
    for layer, weight in zip([m for m in model if isinstance(m, ps.nn.SparseConv3d)], dense):
        pruning.check_2to4(pruning.weight_mask(layer), pruning.channel_order(layer))
        assert isinstance(pruning.mask_parametrization(layer), pruning.WeightMask)  # the learner is gone
        torch.testing.assert_close(layer.weight, weight * pruning.weight_mask(layer))


def test_learned_mask_logits_start_from_magnitude():
    weight = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(6))
    learner = pruning.LearnedMask(weight, torch.arange(8))
    assert torch.equal(learner.hard_mask(), pruning.magnitude_mask(weight))
    learner.eval()
    assert torch.equal(learner.mask().bool(), pruning.magnitude_mask(weight))
    torch.testing.assert_close(learner(weight), weight * pruning.magnitude_mask(weight))


def test_prune_command_end_to_end_on_a_tiny_data_set(tmp_path, capsys):
    import json

    from pointsparse.cli import main
    from pointsparse.datasets.synthetic import LidarConfig, generate_dataset

    root = generate_dataset(tmp_path / "kitti", {0: 2, 8: 1}, seed=2, config=LidarConfig(beams=16, azimuth_steps=360))
    run = tmp_path / "run"
    assert main(["train", "--data-root", str(root), "--out-dir", str(run), "--epochs", "1", "--cr", "0.125",
                 "--batch-size", "1", "--max-voxels", "1500", "--workers", "0", "--train-split", "0",
                 "--val-split", "8"]) == 0
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(run / "last.pt"), "--method", "permute", "--out", str(out), "--split", "8",
                 "--train-split", "0", "--learn-steps", "2", "--batch-size", "1", "--workers", "0",
                 "--finetune-epochs", "1", "--distill", "0.5", "--recalibrate", "2",
                 "--eval-data-root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("dense", "magnitude", "permute", "learned", "permute + SR-STE"))
    assert "re-estimated on 2 batches" in printed
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["distill"] == {"alpha": 0.5, "temperature": 2.0}
    assert report["recalibrate_batches"] == 2 and report["eval_data_root"] == str(root)
    assert report["learn"] == {"steps": 2, "lr": 0.05, "temperature": [2.0, 0.1], "scale": 10.0}
    assert all(0 <= row["miou_present_uncalibrated"] <= 1 and row["train_loss"] > 0 for row in report["rows"])
    rows = {row["model"]: row for row in report["rows"]}
    assert rows["dense"]["nonzeros"] == rows["dense"]["parameters"]
    for method in ("magnitude", "permute", "learned", "permute + SR-STE"):
        assert rows[method]["nonzeros"] < rows["dense"]["nonzeros"]
        assert rows[method]["compressed_bytes"] < rows[method]["checkpoint_bytes"]
    assert main(["eval", str(out), "--split", "8", "--workers", "0"]) == 0  # loads unchanged
    budgeted = tmp_path / "budgeted.pt"
    assert main(["prune", str(run / "last.pt"), "--method", "magnitude", "--out", str(budgeted), "--split", "8",
                 "--train-split", "0", "--learn-steps", "1", "--batch-size", "1", "--workers", "0",
                 "--sensitivity-budget", "0.5"]) == 0
    sens = json.loads(budgeted.with_suffix(".json").read_text())["sensitivity"]
    assert len(sens) == 47 and budgeted.with_suffix(".sensitivity.png").exists()
    assert sum(max(s["drop"], 0) for s in sens if s["pruned"]) <= 0.5
    with pytest.raises(SystemExit, match="method"):
        main(["prune", str(out), "--method", "random", "--out", str(tmp_path / "x.pt")])


def test_srste_updates_every_weight_and_ends_2to4():
    torch.manual_seed(0)
    x = random_tensor(num_points=200, channels=8, span=10, seed=7, dtype=torch.float32)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.ReLU(), ps.nn.SparseConv3d(8, 4, 3))
    pruning.prune_model(model, include=["*"], exclude=[])
    first = model[0]
    before = first.weight.detach().clone()
    pruned_before = ~pruning.weight_mask(first)
    target = torch.randn(x.coords.shape[0], 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruned_grads = []
    step = optimizer.step

    def recording_step():
        pruned_grads.append(float(pruning.original_weight(first).grad[pruned_before].abs().sum()))
        step()

    optimizer.step = recording_step
    batches = [(x, target)] * 4
    pruning.srste_finetune(model, batches, lambda m, inputs, t: (m(inputs).feats - t).square().mean(), optimizer)
    # Straight-through: the pruned weights get gradients, so a mask can change.
    assert len(pruned_grads) == 4 and all(g > 0 for g in pruned_grads)
    assert not torch.equal(first.weight.detach(), before)
    for layer in (model[0], model[2]):
        assert isinstance(pruning.mask_parametrization(layer), pruning.WeightMask)  # the learner is gone
        pruning.check_2to4(pruning.weight_mask(layer), pruning.channel_order(layer))
        assert bool((layer.weight[~pruning.weight_mask(layer)] == 0).all())


def test_choose_layers_spends_the_budget_on_the_least_sensitive():
    layers = [pruning.LayerSensitivity(n, d) for n, d in (("a", 0.5), ("b", -0.1), ("c", 2.0), ("d", 0.3))]
    assert pruning.choose_layers(layers, 0.8) == ["a", "b", "d"]
    assert pruning.choose_layers(layers, 0.0) == ["b"]


def test_distillation_loss_mixes_soft_teacher_targets_and_labels():
    torch.manual_seed(0)
    logits = torch.randn(30, 5, requires_grad=True)
    teacher = torch.randn(30, 5)
    labels = torch.randint(0, 5, (30,))
    labels[:3] = -100
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    torch.testing.assert_close(pruning.distillation_loss(logits, teacher, labels, alpha=0.0), ce)
    # Matching the teacher exactly costs nothing in the soft term; its gradient pulls towards it.
    assert float(pruning.distillation_loss(teacher.clone(), teacher, labels, alpha=1.0)) < 1e-6
    soft = pruning.distillation_loss(logits, teacher, labels, alpha=1.0, temperature=3.0)
    p, q = torch.softmax(teacher / 3, 1), torch.log_softmax(logits / 3, 1)
    torch.testing.assert_close(soft, 9 * (p * (p.log() - q)).sum(1).mean())
    mixed = pruning.distillation_loss(logits, teacher, labels, alpha=0.25, temperature=3.0)
    torch.testing.assert_close(mixed, 0.25 * soft + 0.75 * ce)
    mixed.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="alpha"):
        pruning.distillation_loss(logits, teacher, labels, alpha=1.5)


def pruned_pair(device, c_in=64, c_out=32, seed=0):
    torch.manual_seed(seed)
    x = random_tensor(num_points=300, channels=c_in, span=8, seed=seed, dtype=torch.float32, device=device)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(c_in, c_out, 3, bias=True), ps.nn.ReLU(),
                                ps.nn.SparseConv3d(c_out, c_out, 2, 2)).to(device)
    pruning.prune_model(model, "permute", include=["*"], exclude=[])
    return model.eval(), x


def test_semi_structured_execution_plan_equals_the_masked_layer_on_the_cpu():
    """The per-offset product with permuted gathers, sparse above min_pairs and dense below,
    checked with a dense stand-in for the compressed weights (sparse tensor cores need a GPU)."""
    from pointsparse import semi_structured

    model, x = pruned_pair("cpu")
    with torch.no_grad():
        want = model(x)
        skipped = semi_structured.enable_sparse_kernels(model, torch.float64, compress=lambda w: w, min_pairs=50)
        assert skipped == [] and semi_structured.sparse_weights(model[0]) is not None
        got = model(x.to(torch.float64))
    torch.testing.assert_close(got.feats, want.feats.double(), rtol=1e-5, atol=1e-5)
    assert got.coords is want.coords or torch.equal(got.coords, want.coords)
    # Training, or gradients on, runs the ordinary dataflow.
    y = model(x)
    assert y.feats.requires_grad and y.feats.dtype == torch.float32
    semi_structured.disable_sparse_kernels(model)
    assert semi_structured.sparse_weights(model[0]) is None


def test_semi_structured_eligibility_follows_the_backend_shapes():
    from torch.sparse import semi_structured as ss

    from pointsparse import semi_structured

    cutlass = ss.SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS
    model, _ = pruned_pair("cpu", c_in=64, c_out=32)
    assert semi_structured.ineligible_reason(model[0], torch.float16, cutlass) is None
    assert "C_in 32" in semi_structured.ineligible_reason(model[2], torch.float16, cutlass)
    assert "dtype" in semi_structured.ineligible_reason(model[0], torch.float64, cutlass)
    assert semi_structured.ineligible_reason(ps.nn.SparseConv3d(64, 32, 3), torch.float16, cutlass) == "not pruned"
    skipped = dict(semi_structured.enable_sparse_kernels(model))
    assert "no sparse tensor cores" in skipped["0"] or not torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="sparse tensor cores need a CUDA device of compute capability 8.0 or newer")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_cuda_equals_masked_dense(dtype):
    from pointsparse import semi_structured

    model, x = pruned_pair("cuda", c_in=128, c_out=64)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        want = model(x)
        skipped = semi_structured.enable_sparse_kernels(model, dtype, min_pairs=64)
        assert [name for name, _ in skipped] == []
        got = model(x)
    torch.testing.assert_close(got.feats.float(), want.feats.float(), rtol=2e-2, atol=2e-2)


def test_sparse24_bench_says_when_there_are_no_sparse_tensor_cores(tmp_path, capsys):
    from pointsparse.bench.__main__ import main

    scan = tmp_path / "scan.bin"
    np.random.default_rng(0).uniform(0, 5, (500, 4)).astype(np.float32).tofile(scan)
    assert main(["sparse24", "--scan", str(scan), "--out", str(tmp_path / "s.json")]) == 0
    assert "no sparse tensor cores" in capsys.readouterr().out


def test_recalibrated_batch_norm_statistics_are_the_average_over_the_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.BatchNorm(8, relu=True),
                                ps.nn.SparseConv3d(8, 4, 3), ps.nn.BatchNorm(4, momentum=0.3)).eval()
    inputs = [random_tensor(num_points=n, channels=8, span=8, seed=s, dtype=torch.float32)
              for n, s in ((150, 1), (90, 2))]
    norm = model[3]
    norm.running_mean.fill_(5.0)
    # What the last batch norm sees, batch by batch: the average of the batch means, and of the
    # unbiased batch variances, is what a cumulative average (momentum None) ends with.
    seen = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(args[0].feats.detach().clone()))
    assert pruning.recalibrate_batch_norm(model, inputs) == 2
    handle.remove()
    assert not model.training and norm.momentum == 0.3 and model[1].momentum == 0.1
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(norm.running_mean, torch.stack([x.mean(0) for x in seen]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([x.var(0) for x in seen]).mean(0))
    assert int(norm.num_batches_tracked) == 2
    with pytest.raises(ValueError, match="at least one input"):
        pruning.recalibrate_batch_norm(model, [])
    assert not model.training


def test_recalibration_restores_what_learned_masks_cost_the_statistics():
    # Mask learning in training mode leaves running statistics of Gumbel samples; recalibrated on the
    # same inputs, the finalized model's eval output equals a fresh pruned copy recalibrated alike.
    torch.manual_seed(0)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.BatchNorm(8), ps.nn.ReLU(),
                                ps.nn.SparseConv3d(8, 4, 3))
    x = random_tensor(num_points=200, channels=8, span=8, seed=3, dtype=torch.float32)
    logits = pruning.attach_learned_masks(model, exclude=())
    model.train()
    for _ in range(3):
        model(x).feats.square().mean().backward()
        with torch.no_grad():
            for logit in logits:
                logit -= logit.grad
                logit.grad = None
    pruning.finalize_learned_masks(model)
    twin = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.BatchNorm(8), ps.nn.ReLU(),
                               ps.nn.SparseConv3d(8, 4, 3))
    twin.load_state_dict(model.state_dict())
    twin[1].reset_running_stats()
    for m in (model, twin):
        pruning.recalibrate_batch_norm(m, [x])
    model.eval(), twin.eval()
    torch.testing.assert_close(model(x).feats, twin(x).feats)
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)


def test_the_mask_temperature_anneals_geometrically_and_reaches_every_learned_mask():
    taus = [pruning.annealed_temperature(step, 5, 2.0, 0.125) for step in range(7)]
    assert taus[:5] == pytest.approx([2.0, 1.0, 0.5, 0.25, 0.125]) and taus[5:] == pytest.approx([0.125] * 2)
    assert pruning.annealed_temperature(0, 1, 2.0, 0.125) == 2.0
    with pytest.raises(ValueError, match="positive"):
        pruning.annealed_temperature(0, 5, 0.0, 0.1)
    model = torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3), ps.nn.ReLU(), ps.nn.SparseConv3d(8, 4, 3))
    pruning.attach_learned_masks(model, exclude=())
    pruning.set_mask_temperature(model, 0.7)
    assert [pruning.mask_parametrization(m).tau for m in model if isinstance(m, ps.nn.SparseConv3d)] == [0.7, 0.7]
    with pytest.raises(ValueError, match="positive"):
        pruning.set_mask_temperature(model, -1.0)
    # A hot sample spreads over the patterns; a cold one is nearly one pattern per group.
    learner = pruning.mask_parametrization(model[0]).train()
    spread = {}
    for tau in (5.0, 0.01):
        pruning.set_mask_temperature(model, tau)
        torch.manual_seed(0)
        mask = learner.mask().detach()
        spread[tau] = float((mask * (1 - mask)).mean())  # 0 for a hard mask
    assert spread[5.0] > 10 * spread[0.01]


FIXTURE = Path(__file__).parent / "fixtures" / "pruned_checkpoint_before_parametrization.pt"


def fixture_model():
    return torch.nn.Sequential(ps.nn.SparseConv3d(8, 8, 3, bias=True), ps.nn.ReLU(), ps.nn.SparseConv3d(8, 4, 2, 2))


@pytest.mark.parametrize("stored", ["state_dict", "compressed"])
def test_a_checkpoint_written_before_masks_were_parametrizations_loads_and_computes_the_same(stored):
    """The fixture: a permuted-pruned model saved by the code of 209a82e (masks as buffers of the
    layer), with an input and the output it gave."""
    blob = torch.load(FIXTURE, weights_only=False)
    state = blob["state_dict"] if stored == "state_dict" else pruning.decompress_state_dict(blob["compressed"])
    model = fixture_model()
    model.load_state_dict(state)
    for index in (0, 2):
        torch.testing.assert_close(pruning.weight_mask(model[index]), blob["state_dict"][f"{index}.weight_mask"])
        torch.testing.assert_close(pruning.channel_order(model[index]), blob["state_dict"][f"{index}.channel_order"])
    with torch.no_grad():
        out = model(ps.SparseTensor(blob["feats"], blob["coords"])).feats
    torch.testing.assert_close(out, blob["out"])
    # Written again, the format is the one read: the same keys and values.
    again = model.state_dict()
    assert set(again) == set(blob["state_dict"])
    for key, value in blob["state_dict"].items():
        torch.testing.assert_close(again[key], value)


def test_the_layer_carries_no_pruning_state_and_a_pruned_model_copies_and_reloads():
    layer = ps.nn.SparseConv3d(8, 8, 3)
    assert not any(hasattr(layer, name) for name in ("weight_mask", "channel_order", "mask_learner", "semi_structured"))
    model = fixture_model()
    pruning.prune_model(model, include=["*"], exclude=[])
    twin = copy.deepcopy(model)
    assert pruning.weight_mask(twin[0]) is not pruning.weight_mask(model[0])
    torch.testing.assert_close(pruning.weight_mask(twin[0]), pruning.weight_mask(model[0]))
    pruned = fixture_model()
    pruning.prune_model(pruned, "permute", include=["*"], exclude=[])
    pruned.load_state_dict(model.state_dict())  # a pruned layer loads another mask
    torch.testing.assert_close(pruning.weight_mask(pruned[2]), pruning.weight_mask(model[2]))
    with pytest.raises(RuntimeError, match="Unexpected key"):  # nothing slips through unread
        fixture_model().load_state_dict({**model.state_dict(), "0.something": torch.zeros(1)})


def test_a_learned_masks_state_is_written_under_mask_learner():
    model = fixture_model()
    pruning.attach_learned_masks(model, exclude=[])
    keys = set(model.state_dict())
    assert {"0.weight", "0.mask_learner.logits", "0.mask_learner.channel_order"} <= keys
    assert not any("parametrizations" in key for key in keys)
    twin = fixture_model()
    pruning.attach_learned_masks(twin, exclude=[])
    twin.load_state_dict(model.state_dict())
    learned, copied = pruning.mask_parametrization(model[0]), pruning.mask_parametrization(twin[0])
    torch.testing.assert_close(copied.logits, learned.logits)
