"""Recipes that prune better than magnitude alone: learned 2:4 masks (Gumbel-softmax over the six
patterns of each group), SR-STE fine-tuning, distillation from the dense model, batch-norm
recalibration, and per-layer sensitivity to choose which layers to prune. The masks they learn take
the place of a layer's fixed mask while they train (:mod:`pointsparse.nn.weight_mask`)."""

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import SparseConv3d
from ..nn.weight_mask import (channel_order, groups_of_four, mask_parametrization, original_weight,
                              set_mask_parametrization, set_weight_mask, weight_mask)
from .masks import DEFAULT_EXCLUDE, LayerPruning, kept_share, magnitude_mask, prune_layer, search_channel_order, selected


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
        groups = groups_of_four(weight.detach().abs()[:, channel_order])                  # [K, G, 4, C_out]
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
        if not selected(name, include, exclude):
            continue
        weight = module.weight.detach()
        order = search_channel_order(weight) if permute else torch.arange(weight.shape[1])
        learner = LearnedMask(weight, order.to(weight.device), scale, tau)
        set_mask_parametrization(module, learner)
        logits.append(learner.logits)
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
        learner = mask_parametrization(module) if isinstance(module, SparseConv3d) else None
        if not isinstance(learner, LearnedMask):
            continue
        weight = original_weight(module).detach().clone()
        mask = learner.hard_mask()
        set_weight_mask(module, mask, learner.channel_order)
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
    layers = [m for m in model.modules() if isinstance(m, SparseConv3d) and weight_mask(m) is not None]
    learners = [SrSte(channel_order(layer)) for layer in layers]
    for layer, learner in zip(layers, learners):
        set_mask_parametrization(layer, learner)
    model.train()
    for inputs, target in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs, target)
        penalties = [learner.last_penalty for learner in learners]
        (loss + sum(penalties)).backward()
        optimizer.step()
    for layer, learner in zip(layers, learners):
        order = learner.channel_order
        set_weight_mask(layer, magnitude_mask(original_weight(layer).detach(), order), order)


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
        if not selected(name, include, exclude):
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
