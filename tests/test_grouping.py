"""Grouped gather-GEMM-scatter: the planner and its accounting, and every strategy against SEPARATE
and the dense oracle, forward and both gradients, on every conv kind, both kernel-map algorithms and
both devices."""

import pytest
import torch

import pointsparse as ps
from pointsparse import ConvConfig, ConvGrouping, Grouping, GroupingConfig, KernelMapAlgo, plan_grouping
from pointsparse.dataflows.ggs import grouping_plan
from pointsparse.grouping import symmetric_order

from helpers import (DEVICES, GGS, KINDS, assert_compiles_fullgraph, assert_gradcheck, check_against_oracle, kind_input,
                     kind_weight, random_tensor)



# ---------------------------------------------------------------------------------------------- planner

def test_symmetric_order_puts_each_offset_next_to_its_mirror():
    assert symmetric_order(5) == (0, 4, 1, 3, 2)
    assert symmetric_order(8) == (0, 7, 1, 6, 2, 5, 3, 4)


def test_adaptive_with_epsilon_zero_groups_only_equal_counts():
    counts = [5, 7, 7, 3, 9, 7, 7, 5, 5]
    plan = plan_grouping(counts, GroupingConfig(Grouping.ADAPTIVE, epsilon=0.0))
    for group in plan.groups:
        assert len({counts[k] for k in group}) == 1
    assert plan.redundancy == 0.0


def test_adaptive_closes_a_group_when_the_spread_exceeds_epsilon():
    # Symmetric order 0, 5, 1, 4, 2, 3 -> counts 100, 95, 90, 40, 38, 10.
    counts = [100, 90, 38, 10, 40, 95]
    plan = plan_grouping(counts, GroupingConfig(Grouping.ADAPTIVE, epsilon=0.15, threshold=1000))
    assert plan.groups == ((0, 5, 1), (4, 2), (3,))
    assert plan.batched == (True, True, False)
    assert plan.padded == (100, 40, 0)
    # The size threshold sends large groups to one GEMM per member.
    big = plan_grouping(counts, GroupingConfig(Grouping.ADAPTIVE, epsilon=0.15, threshold=50))
    assert big.batched == (False, True, False)


def test_dense_is_one_batched_group_and_skips_the_identity_and_empty_offsets():
    counts = [4, 0, 6, 9, 6, 2, 4]
    plan = plan_grouping(counts, Grouping.DENSE, identity_offset=3)
    assert len(plan.groups) == 1 and plan.batched == (True,)
    assert sorted(plan.groups[0]) == [0, 2, 4, 5, 6]
    assert plan.padded == (6,)
    assert plan.gemm_calls == 2  # the identity GEMM and one batched GEMM


def test_symmetric_pairs_mirrors_without_padding_on_a_submanifold_map():
    x = random_tensor(num_points=300, span=8, seed=2)
    kmap = ps.kernel_map(x, 3)
    plan = grouping_plan(kmap, GroupingConfig(Grouping.SYMMETRIC), 13)
    assert all(len(g) == 2 and g[0] + g[1] == 26 for g in plan.groups)
    assert plan.computed_rows == plan.useful_rows and plan.redundancy == 0.0
    assert plan.gemm_calls == 1 + 13


def brute_force_accounting(neighbors: torch.Tensor, plan) -> tuple:
    """(useful rows, computed rows, GEMM calls), counted from the neighbour table one entry at a time."""
    present = [[int(v) >= 0 for v in row] for row in neighbors.tolist()]
    n = [sum(row[k] for row in present) for k in range(neighbors.shape[1])]
    useful = sum(n)
    computed = n[plan.identity_offset] if plan.identity_offset >= 0 else 0
    calls = 1 if plan.identity_offset >= 0 else 0
    for group, batched in zip(plan.groups, plan.batched):
        if batched:
            height = max(n[k] for k in group)
            for _k in group:
                for _row in range(height):
                    computed += 1
            calls += 1
        else:
            for k in group:
                computed += n[k]
                calls += n[k] > 0
    return useful, computed, calls


@pytest.mark.parametrize("config", [
    GroupingConfig(), GroupingConfig(Grouping.SYMMETRIC), GroupingConfig(Grouping.DENSE),
    GroupingConfig(Grouping.ADAPTIVE, epsilon=0.3, threshold=60),
    GroupingConfig(Grouping.FIXED, groups=[list(range(0, 9)), list(range(9, 27))]),
], ids=lambda c: c.strategy.value)
@pytest.mark.parametrize("kind", ["submanifold", "strided"])
def test_accounting_equals_a_brute_force_count(config, kind):
    x = random_tensor(num_points=200, span=7, seed=3)
    stride = 1 if kind == "submanifold" else 2
    kmap = ps.kernel_map(x, 3, stride)
    plan = grouping_plan(kmap, config, 13 if stride == 1 else -1)
    useful, computed, calls = brute_force_accounting(kmap.neighbors, plan)
    assert (plan.useful_rows, plan.computed_rows, plan.gemm_calls) == (useful, computed, calls)
    assert plan.useful_macs(16, 32) == useful * 16 * 32 and plan.computed_macs(16, 32) == computed * 16 * 32
    assert plan.redundancy == pytest.approx(1 - useful / computed)


@pytest.mark.parametrize("groups,message", [
    ([[0, 1], [2]], r"missing \[3\]"),
    ([[0, 1, 2, 3], [3]], r"repeated \[3\]"),
    ([[0, 1, 2, 3, 4]], r"outside \[0, 4\)"),
    ([[0, 1, 2, 3], []], "empty"),
])
def test_fixed_groups_are_validated(groups, message):
    with pytest.raises(ValueError, match=message):
        plan_grouping([3, 3, 3, 3], GroupingConfig(Grouping.FIXED, groups=groups))


def test_configs_accept_a_bare_strategy_and_reject_what_they_cannot_run():
    assert ConvConfig(grouping=Grouping.DENSE).grouping == ConvGrouping.of(GroupingConfig(Grouping.DENSE))
    passes = ConvGrouping(GroupingConfig(Grouping.DENSE), GroupingConfig(), GroupingConfig(Grouping.SYMMETRIC))
    assert ConvConfig(grouping=passes).grouping is passes
    with pytest.raises(ValueError, match="needs its groups"):
        ConvConfig(grouping=Grouping.FIXED)
    with pytest.raises(ValueError, match="exactly when"):
        GroupingConfig(Grouping.DENSE, groups=[[0]])
    with pytest.raises(ValueError, match="epsilon"):
        GroupingConfig(Grouping.ADAPTIVE, epsilon=1.5)
    with pytest.raises(TypeError, match="Grouping"):
        ConvConfig(grouping="dense")


def test_plans_are_built_once_per_kernel_map():
    x = random_tensor(num_points=100, seed=4)
    kmap = ps.kernel_map(x, 3)
    config = GroupingConfig(Grouping.ADAPTIVE)
    assert grouping_plan(kmap, config, 13) is grouping_plan(kmap, config, 13)


# -------------------------------------------------------------------------------------------- execution

def fixed_in_fours(volume: int) -> GroupingConfig:
    return GroupingConfig(Grouping.FIXED, groups=[list(range(k, min(k + 4, volume))) for k in range(0, volume, 4)])


def groupings(volume: int):
    return {
        "symmetric": ConvGrouping.of(Grouping.SYMMETRIC),
        "fixed": ConvGrouping.of(fixed_in_fours(volume)),
        "dense": ConvGrouping.of(Grouping.DENSE),
        "adaptive": ConvGrouping.of(GroupingConfig(Grouping.ADAPTIVE, epsilon=0.5, threshold=40)),
        "per pass": ConvGrouping(GroupingConfig(Grouping.DENSE), GroupingConfig(Grouping.SYMMETRIC),
                                 GroupingConfig(Grouping.ADAPTIVE, epsilon=0.2)),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", list(KernelMapAlgo))
@pytest.mark.parametrize("kind_name", list(KINDS))
@pytest.mark.parametrize("strategy", list(groupings(1)))
def test_every_strategy_equals_separate_and_the_dense_oracle(device, algo, kind_name, strategy):
    kind = KINDS[kind_name]
    weight = kind_weight(kind, device)
    config = ConvConfig(algo, GGS, groupings(weight.shape[0])[strategy])
    check_against_oracle(kind_input(kind, device, algo), weight, kind, config)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy", list(groupings(1)))
@pytest.mark.parametrize("kind", ["submanifold", "strided", "transposed"])
def test_gradcheck_float64_per_strategy(device, strategy, kind):
    assert_gradcheck(kind, device, ConvConfig(dataflow=GGS, grouping=groupings(27)[strategy]))


def grouped_op_args(device, dtype=torch.float32):
    x = random_tensor(num_points=40, channels=3, seed=8, device=device, dtype=dtype)
    kmap = ps.kernel_map(x, 3)
    plans = [grouping_plan(kmap, GroupingConfig(s), 13).encode()
             for s in (Grouping.DENSE, Grouping.SYMMETRIC, Grouping.ADAPTIVE)]
    weight = torch.randn(27, 3, 5, device=device, dtype=dtype)
    return x, kmap, weight, (x.feats, weight, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, kmap.out_pos, kmap.in_pos,
                             kmap.num_out, 13, *plans)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_ops_pass_opcheck(device):
    x, kmap, weight, args = grouped_op_args(device)
    feats = x.feats.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    torch.library.opcheck(torch.ops.pointsparse.conv_grouped.default, (feats, w, *args[2:]))
    grad = torch.randn(kmap.num_out, 5, device=device)
    torch.library.opcheck(torch.ops.pointsparse.conv_grouped_weight_grad.default,
                          (x.feats, grad, kmap.offset_ptr, kmap.in_idx, kmap.out_idx, 13, list(args[9])))


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_conv_under_autocast_and_in_half_precision(device):
    dtype = torch.bfloat16
    x, kmap, weight, args = grouped_op_args(device)
    reference = torch.ops.pointsparse.conv_gather_scatter(x.feats.double(), weight.double(), kmap.offset_ptr,
                                                          kmap.in_idx, kmap.out_idx, kmap.num_out, 13)
    with torch.autocast(device, dtype=dtype):
        out = torch.ops.pointsparse.conv_grouped(*args)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), reference, atol=0.05 * reference.abs().max().item(), rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_of_a_grouped_conv(device):
    assert_compiles_fullgraph(ConvConfig(dataflow=GGS, grouping=ConvGrouping(
        GroupingConfig(Grouping.DENSE), GroupingConfig(Grouping.SYMMETRIC), GroupingConfig(Grouping.ADAPTIVE))), device)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_plans_and_pair_positions_raise(device):
    x, kmap, weight, args = grouped_op_args(device)
    ops = torch.ops.pointsparse
    base = list(args)
    full = list(args[9])

    def call(plan=None, out_pos=None):
        call_args = list(base)
        if plan is not None:
            call_args[9] = plan
        if out_pos is not None:
            call_args[5] = out_pos
        return ops.conv_grouped(*call_args)

    with pytest.raises(ValueError, match="in no group"):
        call(plan=[1, 0, 0])
    with pytest.raises(ValueError, match="appears twice"):
        call(plan=full + [1, 0, full[2]])
    with pytest.raises(ValueError, match="identity offset 13"):
        call(plan=full + [1, 0, 13])
    with pytest.raises(ValueError, match="cut off"):
        call(plan=full + [3])
    with pytest.raises(ValueError, match="out_pos must have shape"):
        call(out_pos=kmap.out_pos[:-1])
    if device == "cpu":  # CUDA asserts each entry in the kernel instead
        bad = kmap.out_pos.clone()
        bad[0, 0] = kmap.offset_ptr[-1].item() - 1  # a pair of the last offset, in column 0
        with pytest.raises(ValueError, match="pair of offset k in column k"):
            call(out_pos=bad)
