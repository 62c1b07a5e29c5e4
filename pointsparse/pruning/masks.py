"""Weight-side 2:4 pruning of SparseConv3d, the library part: magnitude masks along a channel order
(searched by channel swaps), pruning a layer or a model in place, and compressed storage.

A 2:4 mask keeps exactly two of every four consecutive input channels for each (offset, output
channel) of ``weight [K, C_in, C_out]``: C_in is the reduction dimension of every per-offset GEMM
(the sparse operand of a 2:4 GEMM is ``W_k^T``, 2:4 along its columns). With a channel
permutation ``order`` the groups of four run along ``order`` instead (``weight[:, order]`` is 2:4);
the layer keeps ``order`` so that a sparse kernel can permute its input columns, and masked dense
execution, which needs no permutation, gives the same result either way.

A pruned layer carries its mask as a parametrization of its weight (:mod:`pointsparse.nn.weight_mask`):
its weight reads as the original times the mask, so the pruned weights stay zero in effect through
every optimiser step, and the mask travels with ``state_dict`` as ``weight_mask`` and
``channel_order`` (a fresh model loads a pruned checkpoint as is).
"""

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import SparseConv3d
from ..nn.weight_mask import groups_of_four, set_weight_mask

METHODS = ("magnitude", "permute")
# The stem sees 4 input channels (x, y, z, remission) and the classifier is not a SparseConv3d;
# layers whose names match these stay dense unless chosen explicitly.
DEFAULT_EXCLUDE = ("stem.*",)


def magnitude_mask(weight: Tensor, order: Optional[Tensor] = None) -> Tensor:
    """bool ``[K, C_in, C_out]``: the two largest ``|w|`` of every four input channels (along
    ``order`` when given; ties keep the lower position)."""
    permuted = weight if order is None else weight[:, order]
    groups = groups_of_four(permuted.detach().abs())                               # [K, G, 4, C_out]
    ranks = torch.sort(groups, dim=2, descending=True, stable=True).indices  # [K, G, 4, C_out]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, ranks[:, :, :2], True)
    mask = keep.reshape(permuted.shape)
    if order is None:
        return mask
    unpermuted = torch.empty_like(mask)
    unpermuted[:, order] = mask
    return unpermuted


def kept_magnitude(weight: Tensor, mask: Tensor) -> float:
    """Sum of ``|w|`` over the kept weights (what a permutation tries to maximise)."""
    return float((weight.detach().abs() * mask).sum())


def kept_share(weight: Tensor, mask: Tensor) -> float:
    """Share of ``sum |w|`` the mask keeps (1.0 for an all-zero weight)."""
    total = float(weight.detach().abs().sum())
    return kept_magnitude(weight, mask) / total if total else 1.0


def selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a layer name matches an ``include`` pattern and no ``exclude`` one (fnmatch)."""
    return any(fnmatch.fnmatch(name, p) for p in include) and not any(fnmatch.fnmatch(name, p) for p in exclude)


def search_channel_order(weight: Tensor, rounds: int = 64, candidates: int = 256, seed: int = 0) -> Tensor:
    """A permutation of the input channels whose magnitude mask keeps more ``|w|`` (Pool & Yu's
    channel swaps): each round tries ``candidates`` random swaps of two channels in different groups
    and applies the best improving one; it stops when a round finds none. Never worse than the
    identity, which it starts from. int64 ``[C_in]``."""
    groups_of_four(weight)
    c_in = weight.shape[1]
    magnitude = weight.detach().abs().to(torch.float64).cpu()               # [K, C_in, C_out]
    order = torch.arange(c_in)
    gen = torch.Generator().manual_seed(seed)

    def group_scores(columns: Tensor) -> Tensor:  # [..., 4, K, C_out] -> kept magnitude [...]
        return columns.topk(2, dim=-3).values.sum((-3, -2, -1))

    for _ in range(rounds):
        i = torch.randint(0, c_in, (candidates,), generator=gen)
        j = torch.randint(0, c_in, (candidates,), generator=gen)
        i, j = i[i // 4 != j // 4], j[i // 4 != j // 4]
        if i.numel() == 0:
            break
        groups_i, groups_j = i // 4, j // 4
        members = torch.arange(4)
        cols_i = order[(groups_i[:, None] * 4 + members)]                   # [S, 4] channel ids
        cols_j = order[(groups_j[:, None] * 4 + members)]
        before = (group_scores(magnitude[:, cols_i].permute(1, 2, 0, 3)) +
                  group_scores(magnitude[:, cols_j].permute(1, 2, 0, 3)))
        swapped_i, swapped_j = cols_i.clone(), cols_j.clone()
        rows = torch.arange(i.numel())
        swapped_i[rows, i % 4] = order[j]
        swapped_j[rows, j % 4] = order[i]
        after = (group_scores(magnitude[:, swapped_i].permute(1, 2, 0, 3)) +
                 group_scores(magnitude[:, swapped_j].permute(1, 2, 0, 3)))
        gain = after - before
        best = int(gain.argmax())
        if gain[best] <= 1e-12 * float(before.abs().max()):
            break
        a, b = int(i[best]), int(j[best])
        order[a], order[b] = order[b].clone(), order[a].clone()
    return order


@dataclass
class LayerPruning:
    name: str
    c_in: int
    pruned: bool
    reason: str            # why a layer was skipped ("" when pruned)
    kept_magnitude: float  # share of sum |w| the mask keeps (1.0 when skipped)


def prune_layer(module: SparseConv3d, method: str = "magnitude", *, search_rounds: int = 64) -> float:
    """Prunes one layer in place with ``method``; returns the share of ``sum |w|`` kept."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    weight = module.weight.detach().clone()  # set_weight_mask zeroes the layer's weight in place
    order = search_channel_order(weight, search_rounds) if method == "permute" else torch.arange(weight.shape[1])
    mask = magnitude_mask(weight, order.to(weight.device))
    set_weight_mask(module, mask, order)
    return kept_share(weight, mask)


def prune_model(model: nn.Module, method: str = "magnitude", *, include: Sequence[str] = ("*",),
                exclude: Sequence[str] = DEFAULT_EXCLUDE, search_rounds: int = 64) -> List[LayerPruning]:
    """Prunes every SparseConv3d of ``model`` whose name matches ``include`` and no ``exclude``
    pattern (fnmatch); layers whose C_in is not a multiple of 4 are skipped and reported."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    report = []
    for name, module in model.named_modules():
        if not isinstance(module, SparseConv3d):
            continue
        if not selected(name, include, exclude):
            report.append(LayerPruning(name, module.in_channels, False, "excluded by name", 1.0))
        elif module.in_channels % 4:
            report.append(LayerPruning(name, module.in_channels, False, "C_in not a multiple of 4", 1.0))
        else:
            kept = prune_layer(module, method, search_rounds=search_rounds)
            report.append(LayerPruning(name, module.in_channels, True, "", kept))
    return report


def compress_state_dict(state: Dict[str, Tensor]) -> Dict[str, object]:
    """The state dict with every pruned weight stored as its kept values and their positions within
    each group of four (half the values, plus uint8 positions); exact, since a pruned layer's
    masked weights are zero."""
    pruned = [key[: -len("weight_mask")] for key in state if key.endswith("weight_mask")]
    out: Dict[str, object] = {}
    for key, value in state.items():
        prefix = next((p for p in pruned if key in (p + "weight", p + "weight_mask")), None)
        if prefix is None:
            out[key] = value
        elif key == prefix + "weight_mask":
            out[key] = {"format": "2:4 mask"}
        else:
            order, mask = state[prefix + "channel_order"], state[prefix + "weight_mask"]
            groups = groups_of_four(mask[:, order]).to(torch.uint8)                        # [K, G, 4, C_out]
            positions = torch.sort(groups, dim=2, descending=True, stable=True).indices[:, :, :2]
            values = torch.gather(groups_of_four(value[:, order]), 2, positions)           # [K, G, 2, C_out]
            out[key] = {"format": "2:4", "shape": list(value.shape), "values": values.clone(),
                        "positions": positions.to(torch.uint8)}
    return out


def decompress_state_dict(blob: Dict[str, object]) -> Dict[str, Tensor]:
    """Inverse of :func:`compress_state_dict`: masks and zeroed weights rebuilt exactly."""
    state: Dict[str, Tensor] = {}
    for key, value in blob.items():
        if isinstance(value, dict) and value.get("format") == "2:4":
            prefix = key[: -len("weight")]
            order = blob[prefix + "channel_order"]
            K, c_in, c_out = value["shape"]
            positions = value["positions"].long()
            values = value["values"]
            permuted = torch.zeros(K, c_in // 4, 4, c_out, dtype=values.dtype).scatter_(2, positions, values)
            permuted_mask = torch.zeros(K, c_in // 4, 4, c_out, dtype=torch.bool).scatter_(2, positions, True)
            weight = torch.empty(K, c_in, c_out, dtype=values.dtype)
            mask = torch.empty(K, c_in, c_out, dtype=torch.bool)
            weight[:, order] = permuted.reshape(K, c_in, c_out)
            mask[:, order] = permuted_mask.reshape(K, c_in, c_out)
            state[key] = weight
            state[prefix + "weight_mask"] = mask
        elif not (isinstance(value, dict) and value.get("format") == "2:4 mask"):
            state[key] = value
    return state
