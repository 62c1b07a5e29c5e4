"""``torchsparse.nn.functional``: conv3d and its configuration calls, the point-voxel helpers
SPVCNN uses, global pooling and activations, on pointsparse ops.

TorchSparse's configuration (dataflow, kernel-map mode, mask splits, ...) picks kernels; here an
explicitly set configuration maps onto :class:`pointsparse.ConvConfig` where a counterpart exists
(ImplicitGEMM -> ``Dataflow.IMPLICIT_GEMM`` with ``ifsort`` / ``split_mask_num``, GatherScatter ->
``Dataflow.GATHER_GEMM_SCATTER`` with adaptive grouping from ``epsilon`` / ``mm_thresh``,
FetchOnDemand -> ``Dataflow.AUTO``) and warns once about the rest. Without one, pointsparse's own
defaults run. ``downsample_mode`` is semantic and always honoured: ``"spconv"`` (the default)
outputs every reached cell, ``"minkowski"`` the occupied ones.
"""

import enum
import sys
from typing import Optional

import torch
import torch.nn.functional as TF
from torch import Tensor

from .... import functional as NF
from .... import ops
from .... import point_voxel as pv
from ....config import ConvConfig, Dataflow as NativeDataflow, KernelMapAlgo, OutputRule
from ....convert import to_pointsparse_weight
from ....grouping import Grouping, GroupingConfig
from ....implicit import ImplicitGemmConfig
from ... import warn_once
from ..tensor import SparseTensor, make_ntuple

conv_config = sys.modules[__name__]  # TorchSparse code calls F.conv_config.get_default_conv_config()


class Dataflow(enum.Enum):
    ImplicitGEMM = 0
    GatherScatter = 1
    FetchOnDemand = 2
    CodedCSR = 3


class ConvMode(enum.Enum):
    mode0 = 0
    mode1 = 1
    mode2 = 2


class AttributeDict(dict):
    """A dict whose keys read and write as attributes (TorchSparse's config record)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


_DEFAULTS = dict(dataflow=Dataflow.ImplicitGEMM, ifsort=False, kmap_mode="hashmap_on_the_fly",
                 downsample_mode="spconv", split_mask_num=1, split_mask_num_bwd=3, epsilon=0.0, mm_thresh=0,
                 FOD_fusion=True)
_state = {"global": None, "conv_mode": ConvMode.mode0, "kmap_mode": "hashmap_on_the_fly", "downsample_mode": "spconv"}


def get_default_conv_config(conv_mode: ConvMode = ConvMode.mode0, training: bool = False) -> AttributeDict:
    config = AttributeDict(_DEFAULTS)
    if conv_mode in (ConvMode.mode1, ConvMode.mode2):
        config.ifsort = True
    if conv_mode is ConvMode.mode2:
        config.split_mask_num = 3
    return config


def get_global_conv_config() -> Optional[AttributeDict]:
    return _state["global"]


def set_global_conv_config(config) -> None:
    full = AttributeDict(_DEFAULTS)
    full.update(config)
    _state["global"] = full


def clear_global_conv_config() -> None:
    _state["global"] = None


def get_conv_mode() -> ConvMode:
    return _state["conv_mode"]


def set_conv_mode(mode) -> None:
    _state["conv_mode"] = ConvMode(mode) if isinstance(mode, int) else mode


def get_kmap_mode() -> str:
    return _state["kmap_mode"]


def set_kmap_mode(mode: str) -> None:
    if mode not in ("hashmap_on_the_fly", "hashmap"):
        raise ValueError(f'kmap_mode must be "hashmap_on_the_fly" or "hashmap", got {mode!r}')
    _state["kmap_mode"] = mode


def get_downsample_mode() -> str:
    return _state["downsample_mode"]


def set_downsample_mode(mode: str) -> None:
    if mode not in ("spconv", "minkowski"):
        raise ValueError(f'downsample_mode must be "spconv" or "minkowski", got {mode!r}')
    _state["downsample_mode"] = mode


def native_config(config) -> ConvConfig:
    """An explicitly set TorchSparse config as pointsparse's ConvConfig (see the module docstring)."""
    full = AttributeDict(_DEFAULTS)
    full.update(config)
    flow = full.dataflow
    if flow is Dataflow.CodedCSR:
        raise NotImplementedError("Dataflow.CodedCSR is not implemented (nor is it in TorchSparse 2.1)")
    for name in ("split_mask_num_bwd", "FOD_fusion"):
        if full[name] != _DEFAULTS[name]:
            warn_once(f"torchsparse conv config {name}={full[name]!r} has no pointsparse counterpart; ignored")
    if flow is Dataflow.ImplicitGEMM:
        implicit = ImplicitGemmConfig(reorder=bool(full.ifsort), splits=max(1, int(full.split_mask_num)))
        return ConvConfig(KernelMapAlgo.HASH, NativeDataflow.IMPLICIT_GEMM, implicit=implicit)
    if flow is Dataflow.GatherScatter:
        grouping = Grouping.SEPARATE
        if full.epsilon > 0 or full.mm_thresh > 0:
            grouping = GroupingConfig(Grouping.ADAPTIVE, epsilon=float(full.epsilon), threshold=int(full.mm_thresh))
        return ConvConfig(KernelMapAlgo.HASH, NativeDataflow.GATHER_GEMM_SCATTER, grouping)
    warn_once("torchsparse Dataflow.FetchOnDemand runs as pointsparse Dataflow.AUTO (fused kernels on the CPU)")
    return ConvConfig(KernelMapAlgo.HASH, NativeDataflow.AUTO)


def conv3d(input: SparseTensor, weight: Tensor, kernel_size, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1, config=None, transposed: bool = False, generative: bool = False,
           training: bool = False) -> SparseTensor:
    """TorchSparse's conv3d: ``weight`` in TorchSparse's layout (``[K, C_in, C_out]``, even
    volumes z fastest; ``[C_in, C_out]`` for 1x1x1), stride 1 submanifold, strided convs by
    ``downsample_mode``, transposed convs inverting the strided conv of the same geometry."""
    size, step, dil = make_ntuple(kernel_size, 3), make_ntuple(stride, 3), make_ntuple(dilation, 3)
    explicit = config if config is not None else _state["global"]
    native = native_config(explicit) if explicit is not None else ConvConfig()
    mode = explicit.get("downsample_mode", "spconv") if explicit is not None else _state["downsample_mode"]
    if size == (1, 1, 1) and step == (1, 1, 1) and dil == (1, 1, 1) and not transposed:
        matrix = weight if weight.dim() == 2 else weight[0]
        feats = input.feats.matmul(matrix)
        return input.derive(feats if bias is None else feats + bias)
    x = input.to_native()
    rule = {}
    if generative:
        rule = dict(generative=True, padding=make_ntuple(padding, 3))
    elif transposed:
        rule = _rule_inverted(x, size, step, dil)
    elif step != (1, 1, 1) and mode == "spconv":
        rule = dict(outputs=OutputRule.REACHED, padding=make_ntuple(padding, 3))
    y = NF.conv3d(x, to_pointsparse_weight(weight, "torchsparse", size), kernel_size=size, bias=bias, stride=step,
                  dilation=dil, transposed=transposed, config=native, **rule)
    caches = input._caches
    if y.cache is not x.cache:  # new coordinates at a known stride: a cache of their own
        caches = caches.fork()
        caches.native = y.cache
    batch = input.spatial_range[0] if input.spatial_range is not None and len(input.spatial_range) == 4 else None
    return SparseTensor.from_native(y, caches, batch)


def _rule_inverted(x, size, step, dil) -> dict:
    """The rule and padding of the strided conv a transposed conv inverts, found in the cache
    (TorchSparse keys it by strides, kernel size and dilation only)."""
    fine = tuple(t // s for t, s in zip(x.stride, step))
    for key in x.cache.kmaps:
        if (not key.transposed and key.tensor_stride == fine and key.kernel_size == size and key.stride == step
                and key.dilation == dil):
            return dict(outputs=key.outputs, padding=key.padding)
    raise ValueError(f"transposed conv with kernel {size} and stride {step} on a tensor of stride {x.stride} "
                     f"needs the strided conv it inverts (kernel {size}, stride {step} from stride {fine}) "
                     f"to have run on this tensor's coordinates")


def sphash(coords: Tensor, offsets: Optional[Tensor] = None) -> Tensor:
    """int64 keys of coords int32 ``[N, 4]`` (batch, x, y, z): ``[N]``, or ``[K, N]`` for the coords
    shifted by each of ``offsets [K, 3]``. Equal coordinates give equal keys, different ones
    different keys (a packing, not a lossy hash)."""
    coords = coords.int().contiguous()
    if offsets is None:
        return ops.pack_coords(coords)
    shifted = coords[None].repeat(offsets.shape[0], 1, 1)                           # [K, N, 4]
    shifted[:, :, 1:] += offsets.to(coords.device, torch.int32)[:, None]
    return ops.pack_coords(shifted.reshape(-1, 4)).reshape(offsets.shape[0], coords.shape[0])


def sphashquery(queries: Tensor, references: Tensor) -> Tensor:
    """Index in ``references [R]`` of each key of ``queries`` (any shape), -1 where absent."""
    order = torch.argsort(references)
    ordered = references[order]
    flat = queries.reshape(-1)
    if ordered.numel() == 0:
        return torch.full_like(queries, -1, dtype=torch.int64)
    pos = torch.searchsorted(ordered, flat).clamp(max=ordered.numel() - 1)
    found = ordered[pos] == flat
    return torch.where(found, order[pos], torch.full_like(pos, -1)).reshape(queries.shape)


def spcount(idx_query: Tensor, num: int) -> Tensor:
    """int32 ``[num]``: points per voxel index (-1 ignored)."""
    return pv.point_counts(idx_query.reshape(-1), int(num)).int()


def spvoxelize(feats: Tensor, idx_query: Tensor, counts: Tensor) -> Tensor:
    """Mean of ``feats [P, C]`` per voxel index ``idx_query [P]`` with ``counts`` from :func:`spcount`."""
    return pv.voxelize(feats, idx_query.reshape(-1), counts.shape[0], counts)


# TorchSparse's corner order for calc_ti_weights / spdevoxelize: z fastest, then y, then x.
_TI_CORNERS = torch.tensor([(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=torch.int32)


def calc_ti_weights(coords: Tensor, idx_query: Tensor, scale: float = 1) -> Tensor:
    """Trilinear weights ``[P, 8]`` of float ``coords [P, 3]`` for the corners of the cell of size
    ``scale`` holding them (order z fastest), zero where ``idx_query [P, 8]`` is -1, renormalised."""
    with torch.no_grad():
        frac = coords / scale - torch.floor(coords / scale)
        return pv.corner_weights(frac, _TI_CORNERS, idx_query)


def spdevoxelize(feats: Tensor, idx_query: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[:, j] * feats[idx_query[:, j]]`` (``[P, 8]`` each, -1 adds nothing)."""
    return pv.interpolate(feats, idx_query.long(), weights)


def global_avg_pool(inputs: SparseTensor) -> Tensor:
    return NF.global_pool(inputs.to_native(), "mean")


def global_max_pool(inputs: SparseTensor) -> Tensor:
    return NF.global_pool(inputs.to_native(), "amax")


def relu(input: SparseTensor, inplace: bool = True) -> SparseTensor:
    return input.derive(TF.relu(input.feats, inplace=inplace))


def silu(input: SparseTensor, inplace: bool = True) -> SparseTensor:
    return input.derive(TF.silu(input.feats, inplace=inplace))


def leaky_relu(input: SparseTensor, negative_slope: float = 0.1, inplace: bool = True) -> SparseTensor:
    return input.derive(TF.leaky_relu(input.feats, negative_slope, inplace=inplace))
