"""Weights and checkpoints between pointsparse and TorchSparse, spconv and MinkowskiEngine.

Conv weight layouts (``K`` the kernel volume; ours lists offsets x fastest, see
:func:`~pointsparse.offsets.kernel_offsets`):

=============== ============================== =============================================
format          conv weight                    notes
=============== ============================== =============================================
pointsparse     ``weight [K, C_in, C_out]``    bias ``[C_out]``
torchsparse     ``kernel [K, C_in, C_out]``    even-volume kernels list offsets z fastest;
                                               a 1x1x1 stride-1 kernel is ``[C_in, C_out]``
minkowski       ``kernel [K, C_in, C_out]``    x fastest like ours; 1x1x1 stride-1 kernel
                                               ``[C_in, C_out]``; bias ``[1, C_out]``;
                                               ``MinkowskiBatchNorm`` nests ``bn.*``
spconv          ``weight [C_out, k0, k1, k2,   spconv 2.x (KRSC); axes (d0, d1, d2) of its
                C_in]``                        indices, bias ``[C_out]``
spconv-rsck     ``weight [k0, k1, k2, C_in,    spconv 1.x and the native algorithm of 2.x
                C_out]``
=============== ============================== =============================================

spconv's index axes are whatever its user fed it: ``axes="xyz"`` keeps (d0, d1, d2) as our
(x, y, z), which is how :mod:`pointsparse.compat.spconv` runs spconv code; ``axes="zyx"`` reverses
them, for OpenPCDet-style (batch, z, y, x) indices moved into a pointsparse model fed (batch, x, y, z).

Batch norms are flat (``bn.weight``) in pointsparse, TorchSparse and spconv. Checkpoints are read
with ``weights_only=True`` (:func:`pointsparse.checkpoint.load`), foreign ones too.
"""

import math
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .offsets import as_triple

FORMATS = ("pointsparse", "torchsparse", "minkowski", "spconv", "spconv-rsck")
Triple = Tuple[int, int, int]
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")


def _check_axes(axes: str) -> None:
    if axes not in ("xyz", "zyx"):
        raise ValueError(f"axes must be 'xyz' or 'zyx', got {axes!r}")


def torchsparse_offset_order(kernel_size: Sequence[int]) -> Tensor:
    """int64 ``[K]``: row of TorchSparse's kernel holding each of our offsets (identity for odd
    volumes; for even volumes TorchSparse lists offsets z fastest, we list them x fastest)."""
    kx, ky, kz = as_triple(kernel_size, "kernel_size")
    ours = torch.arange(kx * ky * kz)
    if (kx * ky * kz) % 2 == 1:
        return ours
    ix, iy, iz = ours % kx, (ours // kx) % ky, ours // (kx * ky)
    return (ix * ky + iy) * kz + iz


def to_pointsparse_weight(weight: Tensor, fmt: str, kernel_size: Sequence[int], axes: str = "xyz") -> Tensor:
    """A conv weight of format ``fmt`` as ours, ``[K, C_in, C_out]``. ``kernel_size``: ours (x, y, z)."""
    _check_format(fmt)
    _check_axes(axes)
    size = as_triple(kernel_size, "kernel_size")
    volume = math.prod(size)
    if fmt in ("torchsparse", "minkowski") and weight.dim() == 2:
        weight = weight[None]                                                  # 1x1x1: [1, C_in, C_out]
    if fmt in ("pointsparse", "torchsparse", "minkowski"):
        if weight.dim() != 3 or weight.shape[0] != volume:
            raise ValueError(f"a {fmt} kernel of size {size} must be [{volume}, C_in, C_out], got {tuple(weight.shape)}")
        return weight[torchsparse_offset_order(size)] if fmt == "torchsparse" else weight
    if weight.dim() != 5:
        raise ValueError(f"a {fmt} weight must have 5 dimensions, got {tuple(weight.shape)}")
    grid = weight.permute(1, 2, 3, 4, 0) if fmt == "spconv" else weight           # [k0, k1, k2, C_in, C_out]
    if axes == "zyx":
        grid = grid.permute(2, 1, 0, 3, 4)
    if tuple(grid.shape[:3]) != size:
        raise ValueError(f"a {fmt} weight of shape {tuple(weight.shape)} does not hold a {size} kernel "
                         f"(axes {axes!r})")
    # Ours: x fastest, so [kz, ky, kx] in row-major order.
    return grid.permute(2, 1, 0, 3, 4).reshape(volume, grid.shape[3], grid.shape[4])


def from_pointsparse_weight(weight: Tensor, fmt: str, kernel_size: Sequence[int], stride: Sequence[int] = (1, 1, 1),
                            axes: str = "xyz") -> Tensor:
    """Our ``[K, C_in, C_out]`` conv weight in format ``fmt`` (the inverse of
    :func:`to_pointsparse_weight`); ``stride`` decides whether a 1x1x1 kernel is stored 2-D."""
    _check_format(fmt)
    _check_axes(axes)
    size = as_triple(kernel_size, "kernel_size")
    volume = math.prod(size)
    if weight.dim() != 3 or weight.shape[0] != volume:
        raise ValueError(f"a pointsparse kernel of size {size} must be [{volume}, C_in, C_out], got {tuple(weight.shape)}")
    if fmt == "pointsparse":
        return weight
    if fmt in ("torchsparse", "minkowski"):
        if volume == 1 and as_triple(stride, "stride") == (1, 1, 1):
            return weight[0]
        if fmt == "minkowski":
            return weight
        return weight[torch.argsort(torchsparse_offset_order(size))]
    grid = weight.reshape(size[2], size[1], size[0], *weight.shape[1:]).permute(2, 1, 0, 3, 4)  # [kx, ky, kz, I, O]
    if axes == "zyx":
        grid = grid.permute(2, 1, 0, 3, 4)
    return (grid.permute(4, 0, 1, 2, 3) if fmt == "spconv" else grid).contiguous()


def convert_state_dict(state: Dict[str, Tensor], source: str, target: str,
                       kernel_sizes: Optional[Dict[str, Triple]] = None,
                       strides: Optional[Dict[str, Triple]] = None, axes: str = "xyz") -> Dict[str, Tensor]:
    """A state dict of format ``source`` in format ``target`` (through ours).

    Conv weights are found by name and shape: ``*.kernel`` for TorchSparse and MinkowskiEngine,
    3-D ``*.weight`` for pointsparse, 5-D ``*.weight`` for spconv. ``kernel_sizes`` (module name ->
    our (x, y, z) kernel size, e.g. from :func:`conv_geometry` of a model) is needed where the shape
    does not tell, i.e. for kernel volumes that are not cubes; ``strides`` likewise decides whether a
    1x1x1 kernel is stored 2-D (default: stride 1). Everything else passes through, batch norms
    renamed where MinkowskiEngine nests them.
    """
    _check_format(source)
    _check_format(target)
    kernel_sizes, strides = kernel_sizes or {}, strides or {}
    ours = {}
    for key, value in _unnest_minkowski_bn(state).items() if source == "minkowski" else state.items():
        module, _, field = key.rpartition(".")
        if not _is_conv_weight(source, field, value):
            if source == "minkowski" and field == "bias" and value.dim() == 2 and value.shape[0] == 1:
                value = value[0]                                             # conv bias [1, C_out]
            ours[key] = value
            continue
        size = kernel_sizes.get(module) or _kernel_size_of(source, value, axes, key)
        ours[module + ".weight"] = to_pointsparse_weight(value, source, size, axes)
    if target == "pointsparse":
        return ours
    out = {}
    for key, value in ours.items():
        module, _, field = key.rpartition(".")
        if field == "weight" and value.dim() == 3:
            size = kernel_sizes.get(module) or _kernel_size_of("pointsparse", value, "xyz", key)
            name = "kernel" if target in ("torchsparse", "minkowski") else "weight"
            out[f"{module}.{name}"] = from_pointsparse_weight(value, target, size, strides.get(module, (1, 1, 1)), axes)
        elif target == "minkowski" and field == "bias" and value.dim() == 1 and f"{module}.weight" in ours \
                and ours[f"{module}.weight"].dim() == 3:
            out[key] = value[None]                                           # conv bias [1, C_out]
        else:
            out[key] = value
    return _nest_minkowski_bn(out) if target == "minkowski" else out


def conv_geometry(model: nn.Module) -> Tuple[Dict[str, Triple], Dict[str, Triple]]:
    """Kernel sizes and strides of a pointsparse model's convs by module name, for
    :func:`convert_state_dict`."""
    from .nn import SparseConv3d

    convs = {name: m for name, m in model.named_modules() if isinstance(m, SparseConv3d)}
    return ({n: m.kernel_size for n, m in convs.items()}, {n: m.stride for n, m in convs.items()})


def _is_conv_weight(fmt: str, field: str, value: Tensor) -> bool:
    if fmt in ("torchsparse", "minkowski"):
        return field == "kernel" and value.dim() in (2, 3)
    if fmt == "pointsparse":
        return field == "weight" and value.dim() == 3
    return field == "weight" and value.dim() == 5


def _kernel_size_of(fmt: str, value: Tensor, axes: str, key: str) -> Triple:
    if fmt.startswith("spconv"):
        spatial = tuple(value.shape[1:4] if fmt == "spconv" else value.shape[:3])
        return tuple(reversed(spatial)) if axes == "zyx" else spatial
    volume = 1 if value.dim() == 2 else value.shape[0]
    side = round(volume ** (1 / 3))
    if side ** 3 != volume:
        raise ValueError(f"{key}: a kernel of volume {volume} is not a cube; pass its kernel size "
                         f"(kernel_sizes, or a model whose convs tell it)")
    return (side, side, side)


def _unnest_minkowski_bn(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    nested = {key[: -len(".bn.running_mean")] for key in state if key.endswith(".bn.running_mean")}
    pattern = re.compile(r"^(.*)\.bn\.(" + "|".join(_BN_FIELDS) + r")$")
    out = {}
    for key, value in state.items():
        match = pattern.match(key)
        out[f"{match[1]}.{match[2]}" if match and match[1] in nested else key] = value
    return out


def _nest_minkowski_bn(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    norms = {key[: -len(".running_mean")] for key in state if key.endswith(".running_mean")}
    out = {}
    for key, value in state.items():
        module, _, field = key.rpartition(".")
        out[f"{module}.bn.{field}" if module in norms and field in _BN_FIELDS else key] = value
    return out


def convert_checkpoint(path_in, path_out, source: str, target: str, model: Optional[nn.Module] = None,
                       axes: str = "xyz") -> Dict[str, int]:
    """Reads a checkpoint safely (``weights_only=True``), converts its state dict (the whole file,
    or its ``"model"`` / ``"state_dict"`` entry, which is replaced in place) and writes it
    atomically. ``model``: a pointsparse model whose convs give kernel sizes and strides.
    Returns counts of converted conv weights and of all tensors."""
    from . import checkpoint

    blob = checkpoint.load(path_in, map_location="cpu")
    entry = next((k for k in ("model", "state_dict") if isinstance(blob.get(k), dict)), None)
    state = blob[entry] if entry else blob
    sizes, strides = conv_geometry(model) if model is not None else ({}, {})
    converted = convert_state_dict(state, source, target, sizes, strides, axes)
    convs = sum(1 for k, v in state.items() if _is_conv_weight(source, k.rpartition(".")[2], v))
    if entry:
        blob = dict(blob)
        blob[entry] = converted
    else:
        blob = converted
    checkpoint.save(blob, path_out)
    return {"conv_weights": convs, "tensors": len(converted)}
