"""Weight-side 2:4 pruning of SparseConv3d: masks, a validator, magnitude and channel-permutation
methods, pruning a model in place, and compressed storage.

A 2:4 mask keeps exactly two of every four consecutive input channels for each (offset, output
channel) of ``weight [K, C_in, C_out]``: C_in is the reduction dimension of every per-offset GEMM
(the sparse operand of a 2:4 GEMM is ``W_k^T``, 2:4 along its columns). With a channel
permutation ``order`` the groups of four run along ``order`` instead (``weight[:, order]`` is 2:4);
the layer keeps ``order`` so that a sparse kernel can permute its input columns, and masked dense
execution, which needs no permutation, gives the same result either way.

A pruned layer carries its mask as the buffer ``weight_mask`` (and ``channel_order``); its forward
multiplies the weight by the mask, so the pruned weights stay zero in effect through every optimiser
step, and the buffers travel with ``state_dict`` (a fresh model loads a pruned checkpoint as is).
"""

import copy
import fnmatch
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .nn import SparseConv3d

METHODS = ("magnitude", "permute")
# The stem sees 4 input channels (x, y, z, remission) and the classifier is not a SparseConv3d;
# layers whose names match these stay dense unless chosen explicitly.
DEFAULT_EXCLUDE = ("stem.*",)


def _groups(weight: Tensor) -> Tensor:
    """[K, C_in / 4, 4, C_out] view of weight [K, C_in, C_out]; ValueError unless C_in % 4 == 0."""
    if weight.dim() != 3:
        raise ValueError(f"weight must have shape [K, C_in, C_out], got {tuple(weight.shape)}")
    K, c_in, c_out = weight.shape
    if c_in % 4:
        raise ValueError(f"2:4 groups run along C_in, which must be a multiple of 4, got {c_in}")
    return weight.reshape(K, c_in // 4, 4, c_out)


def magnitude_mask(weight: Tensor, order: Optional[Tensor] = None) -> Tensor:
    """bool ``[K, C_in, C_out]``: the two largest ``|w|`` of every four input channels (along
    ``order`` when given; ties keep the lower position)."""
    permuted = weight if order is None else weight[:, order]
    groups = _groups(permuted.detach().abs())                               # [K, G, 4, C_out]
    ranks = torch.sort(groups, dim=2, descending=True, stable=True).indices  # [K, G, 4, C_out]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, ranks[:, :, :2], True)
    mask = keep.reshape(permuted.shape)
    if order is None:
        return mask
    unpermuted = torch.empty_like(mask)
    unpermuted[:, order] = mask
    return unpermuted


def check_2to4(mask: Tensor, order: Optional[Tensor] = None) -> None:
    """ValueError unless ``mask`` (bool ``[K, C_in, C_out]``) keeps exactly two of every four input
    channels (along ``order`` when given)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"a 2:4 mask is bool, got {mask.dtype}")
    if order is not None:
        if sorted(order.tolist()) != list(range(mask.shape[1])):
            raise ValueError(f"channel order must be a permutation of the {mask.shape[1]} input channels")
        mask = mask[:, order]
    kept = _groups(mask).sum(2)                                            # [K, G, C_out]
    if not bool((kept == 2).all()):
        raise ValueError(f"not a 2:4 mask: groups of four keep between {int(kept.min())} and {int(kept.max())}")


def kept_magnitude(weight: Tensor, mask: Tensor) -> float:
    """Sum of ``|w|`` over the kept weights (what a permutation tries to maximise)."""
    return float((weight.detach().abs() * mask).sum())


def kept_share(weight: Tensor, mask: Tensor) -> float:
    """Share of ``sum |w|`` the mask keeps (1.0 for an all-zero weight)."""
    total = float(weight.detach().abs().sum())
    return kept_magnitude(weight, mask) / total if total else 1.0


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a layer name matches an ``include`` pattern and no ``exclude`` one (fnmatch)."""
    return any(fnmatch.fnmatch(name, p) for p in include) and not any(fnmatch.fnmatch(name, p) for p in exclude)


def search_channel_order(weight: Tensor, rounds: int = 64, candidates: int = 256, seed: int = 0) -> Tensor:
    """A permutation of the input channels whose magnitude mask keeps more ``|w|`` (Pool & Yu's
    channel swaps): each round tries ``candidates`` random swaps of two channels in different groups
    and applies the best improving one; it stops when a round finds none. Never worse than the
    identity, which it starts from. int64 ``[C_in]``."""
    _groups(weight)
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
    module.set_weight_mask(mask, order)
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
        if not _selected(name, include, exclude):
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
            groups = _groups(mask[:, order]).to(torch.uint8)                        # [K, G, 4, C_out]
            positions = torch.sort(groups, dim=2, descending=True, stable=True).indices[:, :, :2]
            values = torch.gather(_groups(value[:, order]), 2, positions)           # [K, G, 2, C_out]
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


# The six ways to keep two of four: bool [6, 4].
PATTERNS = torch.tensor([[i in pair for i in range(4)] for pair in
                         ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))])


class LearnedMask(nn.Module):
    """Logits over the six 2-of-4 patterns of every group of a layer's weight (along
    ``channel_order``), initialised from magnitude: the pattern keeping more ``|w|`` starts more
    likely (``scale`` sets how sure). In training, a Gumbel-softmax sample at temperature ``tau``
    gives a soft mask; in eval, the argmax pattern gives a hard 2:4 mask."""

    def __init__(self, weight: Tensor, channel_order: Tensor, scale: float = 10.0, tau: float = 0.1):
        super().__init__()
        groups = _groups(weight.detach().abs()[:, channel_order])                  # [K, G, 4, C_out]
        patterns = PATTERNS.to(weight.device, weight.dtype)                          # [6, 4]
        kept = torch.einsum("kgic,pi->kgcp", groups, patterns)                       # [K, G, C_out, 6]
        kept = kept / kept.amax(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
        self.logits = nn.Parameter(scale * kept)
        self.register_buffer("channel_order", channel_order.clone())
        self.register_buffer("inverse_order", torch.argsort(channel_order))
        self.tau = tau

    def forward(self, weight: Tensor) -> Tensor:
        """``weight`` times the mask: a soft Gumbel-softmax sample in training, the hard mask in eval."""
        return weight * self.mask()

    def mask(self) -> Tensor:
        """The mask ``[K, C_in, C_out]``: soft (Gumbel-softmax sample) in training, hard in eval."""
        if self.training:
            weights = nn.functional.gumbel_softmax(self.logits, tau=self.tau, dim=-1)   # [K, G, C_out, 6]
        else:
            weights = nn.functional.one_hot(self.logits.argmax(-1), 6).to(self.logits.dtype)
        groups = torch.einsum("kgcp,pi->kgic", weights, PATTERNS.to(weights))          # [K, G, 4, C_out]
        K, G, _, C_out = groups.shape
        return groups.reshape(K, 4 * G, C_out)[:, self.inverse_order]

    def hard_mask(self) -> Tensor:
        """bool ``[K, C_in, C_out]``: the most likely pattern of every group."""
        chosen = PATTERNS.to(self.logits.device)[self.logits.argmax(-1)]              # [K, G, C_out, 4]
        K, G, C_out, _ = chosen.shape
        return chosen.permute(0, 1, 3, 2).reshape(K, 4 * G, C_out)[:, self.inverse_order]


def attach_learned_masks(model: nn.Module, *, include: Sequence[str] = ("*",), exclude: Sequence[str] = DEFAULT_EXCLUDE,
                         scale: float = 10.0, tau: float = 0.1, permute: bool = False) -> List[nn.Parameter]:
    """Gives every chosen SparseConv3d (C_in a multiple of 4) a :class:`LearnedMask` and freezes the
    whole model but the mask logits, which it returns for the optimiser. ``permute``: groups along
    a searched channel order (else the identity)."""
    logits = []
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if not isinstance(module, SparseConv3d) or module.in_channels % 4:
            continue
        if not _selected(name, include, exclude):
            continue
        weight = module.weight.detach()
        order = search_channel_order(weight) if permute else torch.arange(weight.shape[1])
        module.mask_learner = LearnedMask(weight, order.to(weight.device), scale, tau)
        logits.append(module.mask_learner.logits)
    return logits


def set_mask_temperature(model: nn.Module, tau: float) -> None:
    """Sets the Gumbel-softmax temperature of every :class:`LearnedMask` in ``model``."""
    if tau <= 0:
        raise ValueError(f"the temperature must be positive, got {tau}")
    for module in model.modules():
        if isinstance(module, LearnedMask):
            module.tau = tau


def annealed_temperature(step: int, steps: int, start: float = 2.0, end: float = 0.1) -> float:
    """Geometric schedule from ``start`` at step 0 to ``end`` at step ``steps - 1``. Mask learning at
    a fixed temperature of 0.1 left the demo model's training loss worse than the magnitude masks it
    started from (0.344 vs 0.281; samples nearly hard but noisy); cooling from 2 to 0.1 with logits
    of scale 10 made it better (0.257-0.262 over two seeds; dense 0.246)."""
    if start <= 0 or end <= 0:
        raise ValueError(f"temperatures must be positive, got {start} and {end}")
    return start * (end / start) ** (min(step, steps - 1) / max(steps - 1, 1))


def finalize_learned_masks(model: nn.Module) -> List[LayerPruning]:
    """Replaces every LearnedMask by its hard 2:4 mask (``set_weight_mask``); returns the layers.
    Batch-norm statistics updated while the masks trained describe Gumbel samples: re-estimate them
    with :func:`recalibrate_batch_norm` before evaluating."""
    report = []
    for name, module in model.named_modules():
        learner = getattr(module, "mask_learner", None) if isinstance(module, SparseConv3d) else None
        if learner is None:
            continue
        weight = module.weight.detach().clone()
        mask = learner.hard_mask()
        module.mask_learner = None
        module.set_weight_mask(mask, learner.channel_order)
        report.append(LayerPruning(name, module.in_channels, True, "", kept_share(weight, mask)))
    return report


class SrSte(nn.Module):
    """SR-STE (Zhou et al., 2021) for one layer: the forward uses the magnitude 2:4 mask of the
    current weight (recomputed every call, along ``channel_order``); the backward passes the gradient
    straight through to every weight, and :meth:`decay` adds ``decay / 2 * |(1 - mask) * w|^2`` so
    that pruned weights shrink instead of flickering in and out."""

    def __init__(self, channel_order: Tensor, decay: float = 2e-4):
        super().__init__()
        self.register_buffer("channel_order", channel_order.clone())
        self.decay_rate = decay
        self.last_penalty: Optional[Tensor] = None

    def forward(self, weight: Tensor) -> Tensor:
        mask = magnitude_mask(weight.detach(), self.channel_order)
        self.last_penalty = 0.5 * self.decay_rate * (weight * ~mask).square().sum()
        return weight + (weight * mask - weight).detach()


def srste_finetune(model: nn.Module, batches, loss_fn, optimizer: torch.optim.Optimizer) -> None:
    """Fine-tunes a pruned model with SR-STE: every pruned layer recomputes its mask from its weights
    each step; ``batches`` yields ``(input, target)`` and ``loss_fn(model, input, target)`` gives the
    loss (so it may consult a teacher on the same input); at the end each layer keeps the magnitude
    mask of its final weights (``set_weight_mask``)."""
    layers = [m for m in model.modules() if isinstance(m, SparseConv3d) and m.weight_mask is not None]
    for layer in layers:
        layer.mask_learner = SrSte(layer.channel_order)
        layer.weight_mask = None
    model.train()
    for inputs, target in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs, target)
        penalties = [layer.mask_learner.last_penalty for layer in layers]
        (loss + sum(penalties)).backward()
        optimizer.step()
    for layer in layers:
        order = layer.mask_learner.channel_order
        layer.mask_learner = None
        layer.set_weight_mask(magnitude_mask(layer.weight.detach(), order), order)


def distillation_loss(logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, alpha: float = 0.5,
                      temperature: float = 2.0, ignore_index: int = -100) -> Tensor:
    """``alpha * T^2 * KL(teacher || student)`` at temperature ``T`` over every row (the dense
    model's soft predictions need no labels) plus ``(1 - alpha)`` times the cross entropy against
    ``labels``. ``logits``, ``teacher_logits``: ``[N, classes]``; ``labels``: ``[N]``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student = nn.functional.log_softmax(logits.float() / temperature, dim=1)
    teacher = nn.functional.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    soft = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2
    if alpha == 1.0:
        return soft
    hard = nn.functional.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


def recalibrate_batch_norm(model: nn.Module, inputs: Iterable) -> int:
    """Re-estimates every batch norm's running statistics as the plain average over ``inputs``
    (model inputs, run in training mode without gradients); modes and momenta are restored.
    Pruning changes every activation the statistics were measured on, and learned masks train
    under Gumbel samples, which leave statistics of masks that are never used; evaluation needs
    those of the final model. Returns the number of inputs seen (ValueError if none).
    (``torch.optim.swa_utils.update_bn`` re-estimates the same way, but restores only the top
    module's mode and leaves the momenta at None when a forward raises.)"""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: every input counts the same
    seen = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in inputs:
                model(batch)
                seen += 1
    finally:
        for module, training in modes.items():
            module.train(training)
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    if norms and not seen:
        raise ValueError("recalibrating batch norm needs at least one input")
    return seen


@dataclass
class LayerSensitivity:
    name: str
    drop: float  # score of the dense model minus the score with only this layer pruned (magnitude)


def sensitivity(model: nn.Module, score: Callable[[nn.Module], float], *, include: Sequence[str] = ("*",),
                exclude: Sequence[str] = DEFAULT_EXCLUDE) -> List[LayerSensitivity]:
    """Prunes one layer at a time (magnitude, on a copy) and measures ``score`` (higher is better,
    e.g. validation mIoU): the drop per prunable layer, in model order."""
    base = score(model)
    results = []
    for name, module in model.named_modules():
        if not isinstance(module, SparseConv3d) or module.in_channels % 4:
            continue
        if not _selected(name, include, exclude):
            continue
        trial = copy.deepcopy(model)
        prune_layer(dict(trial.named_modules())[name])
        results.append(LayerSensitivity(name, base - score(trial)))
    return results


def choose_layers(sensitivities: Sequence[LayerSensitivity], budget: float) -> List[str]:
    """The least sensitive layers whose drops add up to at most ``budget``, in model order."""
    chosen, spent = set(), 0.0
    for item in sorted(sensitivities, key=lambda s: s.drop):
        if spent + max(item.drop, 0.0) > budget:
            break
        chosen.add(item.name)
        spent += max(item.drop, 0.0)
    return [s.name for s in sensitivities if s.name in chosen]
