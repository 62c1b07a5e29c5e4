"""2:4 weight masks as a parametrization of a layer's ``weight`` (``torch.nn.utils.parametrize``).

A mask keeps exactly two of every four consecutive input channels for each (offset, output
channel) of ``weight [K, C_in, C_out]``, along a channel order (``weight[:, order]`` is 2:4). The
layer itself knows nothing of it: its ``weight`` reads as ``original * mask``, so the pruned weights
stay zero in effect through every optimiser step. A learned mask (any module mapping the weight to
the masked weight, :mod:`pointsparse.pruning.recipes`) takes the same place while it trains.

The state dict keeps the format written before masks were parametrizations: ``weight`` (the
original), ``weight_mask`` and ``channel_order``, a learned mask's state under ``mask_learner.``; a
dense layer loading a pruned checkpoint gets its mask (:func:`adopt_masked_state`).
"""

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

_PARAMETRIZED = "parametrizations.weight."
_ORIGINAL = _PARAMETRIZED + "original"
_FIRST = _PARAMETRIZED + "0."
# Keys of the parametrization's state in checkpoints: a fixed mask's buffers, else a learner's.
_MASK_KEYS = {"mask": "weight_mask", "channel_order": "channel_order"}
_LEARNER_PREFIX = "mask_learner."


def groups_of_four(weight: Tensor) -> Tensor:
    """``[K, C_in / 4, 4, C_out]`` view of ``weight [K, C_in, C_out]``; ValueError unless C_in % 4 == 0."""
    if weight.dim() != 3:
        raise ValueError(f"weight must have shape [K, C_in, C_out], got {tuple(weight.shape)}")
    K, c_in, c_out = weight.shape
    if c_in % 4:
        raise ValueError(f"2:4 groups run along C_in, which must be a multiple of 4, got {c_in}")
    return weight.reshape(K, c_in // 4, 4, c_out)


def check_2to4(mask: Tensor, order: Optional[Tensor] = None) -> None:
    """ValueError unless ``mask`` (bool ``[K, C_in, C_out]``) keeps exactly two of every four input
    channels (along ``order`` when given)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"a 2:4 mask is bool, got {mask.dtype}")
    if order is not None:
        if sorted(order.tolist()) != list(range(mask.shape[1])):
            raise ValueError(f"channel order must be a permutation of the {mask.shape[1]} input channels")
        mask = mask[:, order]
    kept = groups_of_four(mask).sum(2)                                      # [K, G, C_out]
    if not bool((kept == 2).all()):
        raise ValueError(f"not a 2:4 mask: groups of four keep between {int(kept.min())} and {int(kept.max())}")


class WeightMask(nn.Module):
    """A fixed 2:4 mask: bool ``mask [K, C_in, C_out]`` and the int64 ``channel_order [C_in]`` its
    groups of four run along (kept for sparse kernels, which permute their input columns)."""

    def __init__(self, mask: Tensor, channel_order: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("channel_order", channel_order)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def mask_parametrization(module: nn.Module) -> Optional[nn.Module]:
    """What maps ``module``'s weight to the weight in use: a :class:`WeightMask`, a learned mask, or
    None for a dense layer."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return module.parametrizations.weight[0]


def weight_mask(module: nn.Module) -> Optional[Tensor]:
    """The layer's fixed 2:4 mask (bool ``[K, C_in, C_out]``), None when dense or while learning."""
    mask = mask_parametrization(module)
    return mask.mask if isinstance(mask, WeightMask) else None


def channel_order(module: nn.Module) -> Optional[Tensor]:
    """The int64 ``[C_in]`` order the layer's 2:4 groups run along, None when dense."""
    return getattr(mask_parametrization(module), "channel_order", None)


def original_weight(module: nn.Module) -> Tensor:
    """The trained parameter under the mask (the weight itself when dense)."""
    return module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight


def set_mask_parametrization(module: nn.Module, mapping: Optional[nn.Module]) -> None:
    """Makes ``mapping`` (a module mapping the weight to the masked weight) the layer's one
    parametrization of ``weight``; None makes it dense. The parameter object stays the same, so
    optimisers holding it keep working."""
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    if mapping is None:
        return
    parametrize.register_parametrization(module, "weight", mapping, unsafe=True)  # mappings keep shape and dtype
    if _write_checkpoint_keys not in module._state_dict_hooks.values():  # once per layer
        module._register_state_dict_hook(_write_checkpoint_keys)
        module._register_load_state_dict_pre_hook(_read_checkpoint_keys, with_module=True)


def set_weight_mask(module: nn.Module, mask: Tensor, order: Tensor) -> None:
    """Prunes ``module`` with a 2:4 ``mask`` (bool ``[K, C_in, C_out]``, groups along ``order``):
    masked weights are zeroed now and masked in every forward, so their gradient is zero and they
    stay zero through training."""
    weight = original_weight(module)
    order = order.to(device=weight.device, dtype=torch.long)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
    mask = mask.to(weight.device)
    check_2to4(mask, order)
    with torch.no_grad():
        weight.mul_(mask)
    set_mask_parametrization(module, WeightMask(mask, order))


def _write_checkpoint_keys(module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: the parametrization's keys in the checkpoint format (see the module doc)."""
    mapping = mask_parametrization(module)
    for key in [k for k in state if k.startswith(prefix + _PARAMETRIZED)]:
        name = key[len(prefix):]
        if name == _ORIGINAL:
            state[prefix + "weight"] = state.pop(key)
        elif name.startswith(_FIRST):
            inner = name[len(_FIRST):]
            new = _MASK_KEYS[inner] if isinstance(mapping, WeightMask) else _LEARNER_PREFIX + inner
            state[prefix + new] = state.pop(key)


def _read_checkpoint_keys(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load pre-hook: checkpoint keys to the parametrization's, for a masked layer."""
    mapping = mask_parametrization(module)
    if mapping is None:
        return
    renames = {"weight": _ORIGINAL}
    if isinstance(mapping, WeightMask):
        renames.update({old: _FIRST + new for new, old in _MASK_KEYS.items()})
    else:
        renames.update({_LEARNER_PREFIX + name: _FIRST + name for name, _ in mapping.state_dict().items()})
    for old, new in renames.items():
        if prefix + old in state:
            state[prefix + new] = state.pop(prefix + old)


def adopt_masked_state(module: nn.Module, state: dict, prefix: str) -> None:
    """Before ``module`` (dense) loads a pruned checkpoint: gives it a mask of the checkpoint's
    shape for the load to fill."""
    if prefix + "weight_mask" in state and weight_mask(module) is None:
        weight = original_weight(module)
        mask = torch.ones(state[prefix + "weight_mask"].shape, dtype=torch.bool, device=weight.device)
        order = torch.empty(state[prefix + "channel_order"].shape, dtype=torch.long, device=weight.device)
        set_mask_parametrization(module, WeightMask(mask, order))
