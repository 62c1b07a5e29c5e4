"""SparseTensor in, SparseTensor out: convolution and the feature-wise operations around it.

Addition of tensors at equal coordinates is ``SparseTensor.__add__`` (``a + b``).
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import dataflows
from .config import ConvConfig, OutputRule
from .kmap import Triple, output_cache
from .offsets import IntOrTriple, as_triple
from .ops import norm
from .pooling import max_over_neighbors
from .tensor import SparseTensor, check_same_coords, kernel_map, same_coords


@dataclass(frozen=True)
class Epilogue:
    """What a conv's output ``y [N_out, C_out]`` becomes before it is returned:
    ``relu?(y * scale + shift [+ residual.feats])`` per channel — an eval-mode batch norm (``scale``,
    ``shift`` ``[C_out]``), a residual block's addition (``residual`` at the conv's output
    coordinates) and a ReLU. The fused CPU dataflow applies it to each block of output rows while the
    block is in cache (float32 / float64 without autocast), the implicit GEMM on CUDA in its kernel's
    store for inference; other dataflows after the conv."""

    scale: Tensor
    shift: Tensor
    relu: bool = False
    residual: Optional[SparseTensor] = None

    def apply(self, y: Tensor) -> Tensor:
        """The epilogue on finished conv output ``y [N_out, C_out]``, in ``y``'s dtype (under autocast
        the half-precision conv output stays half, as after a batch norm module)."""
        residual = None if self.residual is None else self.residual.feats
        if self._fuses_with(y):
            return norm.affine_relu(y.contiguous(), self.scale, self.shift, self.relu,
                                    None if residual is None else residual.contiguous())
        z = torch.addcmul(self.shift, y, self.scale)  # [N, C]: y * scale + shift in one pass (one launch)
        if residual is not None:
            z = z.add_(residual)
        return (z.relu_() if self.relu else z).to(y.dtype)

    def _fuses_with(self, feats: Tensor) -> bool:
        """Whether the CPU kernels (fused conv epilogue, ``affine_relu``) take it with ``feats``."""
        return norm.fused_with(feats, self.scale, self.shift, None if self.residual is None else self.residual.feats)


def conv3d(x: SparseTensor, weight: Tensor, *, kernel_size: IntOrTriple = 3, bias: Optional[Tensor] = None,
           stride: IntOrTriple = 1, dilation: IntOrTriple = 1, transposed: bool = False,
           outputs: OutputRule = OutputRule.OCCUPIED, padding: Optional[IntOrTriple] = None,
           generative: bool = False, config: Optional[ConvConfig] = None,
           epilogue: Optional[Epilogue] = None) -> SparseTensor:
    """Sparse 3-D convolution of ``x`` (feats ``[N, C_in]``) with ``weight [K, C_in, C_out]``.

    ``K`` is the volume of ``kernel_size`` and rows of ``weight`` follow
    :func:`~pointsparse.offsets.kernel_offsets`. Stride 1 is submanifold (outputs at the input
    coordinates); stride s outputs tensor stride ``x.stride * s``; ``transposed`` with stride s
    returns from tensor stride ``t * s`` to the coordinates of the finer tensor at stride t (found
    in ``x.cache``). ``outputs`` chooses which cells come out (:class:`~pointsparse.config.OutputRule`:
    the occupied ones, MinkowskiEngine's rule, or every reached one, spconv's; a transposed conv
    inverts the strided conv of the same rule); ``padding`` (``REACHED`` only) shifts the kernel as
    in spconv, ``None`` meaning the anchoring of :func:`~pointsparse.offsets.kernel_offsets`;
    ``generative`` (transposed only) outputs every finer cell the kernel reaches instead of
    returning to known coordinates. ``bias``: ``[C_out]``. ``config.dataflow`` picks how the per-offset products run
    (fused kernels on the CPU by default, the implicit GEMM on CUDA but for float64; see
    :mod:`pointsparse.dataflows`) and ``config.grouping`` how gather-GEMM-scatter batches offsets.
    ``epilogue`` (:class:`Epilogue`): an eval-mode batch norm, residual and ReLU the conv ends with,
    after the bias. Arguments after ``weight`` are keyword-only. Under ``torch.autocast``
    the result has the autocast dtype (float32 accumulation inside).
    """
    config = config or ConvConfig()
    size, step = as_triple(kernel_size, "kernel_size", planar=1), as_triple(stride, "stride", planar=1)
    _check_conv_inputs(x, weight, bias, size)
    spec = dataflows.resolve(config.dataflow, x.feats.device, x.feats.dtype)
    kmap = kernel_map(x, size, step, dilation, transposed, config, outputs=outputs, padding=padding,
                      generative=generative)
    identity = _identity_offset(size, step, transposed) if outputs is OutputRule.OCCUPIED else -1
    if epilogue is None:
        return conv_output(x, kmap, spec.run(x.feats, weight, kmap, identity, config), bias)
    residual = epilogue.residual
    if residual is not None and not same_coords(residual, kmap.out_coords, kmap.out_stride):
        raise ValueError("the epilogue's residual must be at the conv's output coordinates and stride")
    feats = None
    if spec.run_epilogue is not None:  # in the dataflow's kernels, where they take the operands
        shift = epilogue.shift if bias is None else epilogue.shift + bias * epilogue.scale  # (y + b) s + t
        feats = spec.run_epilogue(x.feats, weight, kmap, identity, config, epilogue.scale, shift, epilogue.relu,
                                  None if residual is None else residual.feats.contiguous())  # [N_out, C_out]
    if feats is None:
        out = conv_output(x, kmap, spec.run(x.feats, weight, kmap, identity, config), bias)
        return out.with_feats(epilogue.apply(out.feats))
    return conv_output(x, kmap, feats)


def conv_output(x: SparseTensor, kmap, feats: Tensor, bias: Optional[Tensor] = None) -> SparseTensor:
    """The output tensor of a conv of ``x`` over ``kmap`` whose products gave ``feats [N_out, C_out]``:
    bias added, the map's coordinates and stride, the spatial range, and the family (see
    :func:`~pointsparse.kmap.output_cache`)."""
    if bias is not None:
        feats = feats + bias.to(feats.dtype)  # under autocast the conv returns the autocast dtype
    out_range = kmap.out_range
    if out_range is None and x.spatial_range is not None and kmap.num_in == x.coords.shape[0] \
            and kmap.out_stride != x.stride and all(o % t == 0 for o, t in zip(kmap.out_stride, x.stride)):
        step = tuple(o // t for o, t in zip(kmap.out_stride, x.stride))      # a strided occupied-cell conv
        out_range = tuple(-(-n // s) for n, s in zip(x.spatial_range, step))  # cells floor(c / s) reaches
    elif out_range is None and kmap.out_stride == x.stride:
        out_range = x.spatial_range                                           # submanifold
    return SparseTensor._derive(feats, kmap.out_coords, kmap.out_stride, output_cache(x.cache, kmap), out_range)


def identity_offset(kernel_size: IntOrTriple, stride: IntOrTriple, transposed: bool) -> int:
    """The offset whose pairs are i -> i for every row (the centre of a submanifold odd kernel),
    computed as one GEMM without gather or scatter; -1 when there is none (and for any conv with
    ``OutputRule.REACHED``, whose outputs are not its inputs)."""
    size, step = as_triple(kernel_size, "kernel_size", planar=1), as_triple(stride, "stride", planar=1)
    return _identity_offset(size, step, transposed)


def _identity_offset(size: Triple, step: Triple, transposed: bool) -> int:
    """identity_offset of checked triples (conv3d has them: no second check per call)."""
    if transposed or step != (1, 1, 1) or not (size[0] % 2 and size[1] % 2 and size[2] % 2):
        return -1
    return size[0] * size[1] * size[2] // 2


def _check_sparse_input(x: SparseTensor, op: str) -> None:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"{op} expects a SparseTensor, got {type(x).__name__}")
    if not x.feats.is_floating_point():
        raise TypeError(f"feats must be floating point, got {x.feats.dtype}")


def _check_conv_inputs(x: SparseTensor, weight: Tensor, bias: Optional[Tensor], size) -> None:
    _check_sparse_input(x, "conv3d")
    volume = size[0] * size[1] * size[2]
    if weight.dim() != 3 or weight.shape[0] != volume:
        raise ValueError(f"weight must have shape [K={volume}, C_in, C_out] for kernel size {size}, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[1] != x.num_channels:
        raise ValueError(f"weight expects {weight.shape[1]} input channels, the tensor has {x.num_channels}")
    # Under autocast the op casts feats and weight to one dtype itself.
    autocast = torch.is_autocast_enabled(x.feats.device.type)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.feats.dtype and not autocast:
            raise TypeError(f"{name} dtype {t.dtype} differs from feats dtype {x.feats.dtype}")
        if t.device != x.feats.device:
            raise ValueError(f"{name} is on {t.device} but the tensor is on {x.feats.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[2],):
        raise ValueError(f"bias must have shape [{weight.shape[2]}], got {tuple(bias.shape)}")


def cat(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """Features of tensors at equal coordinates, concatenated along channels."""
    if len(tensors) == 0:
        raise ValueError("cat needs at least one tensor")
    check_same_coords(tensors, "cat")
    return tensors[0].with_feats(torch.cat([t.feats for t in tensors], 1))


def max_pool3d(x: SparseTensor, kernel_size: IntOrTriple = 2, stride: Optional[IntOrTriple] = None,
               dilation: IntOrTriple = 1, *, outputs: OutputRule = OutputRule.OCCUPIED,
               padding: Optional[IntOrTriple] = None, config: Optional[ConvConfig] = None,
               initial: float = float("-inf")) -> SparseTensor:
    """Max pooling of ``x`` over the kernel map of a conv of the same geometry (``stride`` None: the
    kernel size, as ``torch.nn.functional.max_pool3d``; stride 1: in place, submanifold; stride s: at
    the strided conv's outputs, by ``outputs``); per output and channel ``max(initial, inputs)``
    (:func:`pointsparse.pooling.max_over_neighbors`)."""
    _check_sparse_input(x, "max_pool3d")
    kmap = kernel_map(x, kernel_size, kernel_size if stride is None else stride, dilation, False,
                      config or ConvConfig(), outputs=outputs, padding=padding)
    return conv_output(x, kmap, max_over_neighbors(x.feats, kmap.neighbors, initial))


def global_pool(x: SparseTensor, reduce: str) -> Tensor:
    """``[B, C]``: per batch item, the mean (``"mean"``) or max (``"amax"``) of its features."""
    batch = x.coords[:, 0].long()
    out = x.feats.new_zeros((x.batch_size, x.num_channels))
    index = batch[:, None].expand_as(x.feats)
    return out.scatter_reduce(0, index, x.feats, reduce, include_self=False)
