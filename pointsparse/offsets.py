"""Kernel offsets in the one order every weight ``[K, C_in, C_out]`` uses."""

import itertools
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

IntOrTriple = Union[int, Sequence[int]]


def as_triple(value: IntOrTriple, name: str, minimum: int = 1, planar: Optional[int] = None) -> Tuple[int, int, int]:
    """An int or 3 ints, each an int >= minimum, as a 3-tuple; ValueError / TypeError otherwise.
    With ``planar`` (the unit of the third axis: 1 for sizes, strides and dilations, 0 for
    padding), 2 ints mean a 2-D value: ``(a, b, planar)`` (2-D data lies in the plane z = 0)."""
    if type(value) is int and value >= minimum:  # the common cases first: every conv call takes this
        return (value, value, value)
    if type(value) is tuple and len(value) == 3 and all(type(v) is int and v >= minimum for v in value):
        return value
    what = "an int, 2 ints (2-D) or 3 ints" if planar is not None else "an int or 3 ints"
    try:
        triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    except TypeError:  # not a sequence (a float, None)
        raise TypeError(f"{name} must be {what}, got {value!r}") from None
    if planar is not None and len(triple) == 2:
        triple = (*triple, planar)
    if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in triple):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if min(triple) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return triple


def default_padding(kernel_size: IntOrTriple, dilation: IntOrTriple = 1) -> Tuple[int, int, int]:
    """The padding, in spconv's and ``torch.nn.Conv3d``'s sense, that our kernel anchoring means:
    ``(k // 2) * d`` for odd sizes (centred kernels), 0 for even sizes."""
    size, dil = as_triple(kernel_size, "kernel_size", planar=1), as_triple(dilation, "dilation", planar=1)
    return tuple((k // 2) * d if k % 2 else 0 for k, d in zip(size, dil))


def kernel_offsets(kernel_size: IntOrTriple, dilation: IntOrTriple = 1,
                   padding: Optional[IntOrTriple] = None) -> Tensor:
    """Offsets ``[K, 3]`` int32 of a kernel, in units of the input tensor stride, dilation applied.

    Order: x varies fastest, then y, then z (offset ``k = ix + kx * (iy + ky * iz)``), matching the
    odd-kernel order of TorchSparse and MinkowskiEngine. Offset ``k`` along an axis is
    ``m * d - p`` for kernel index m (spconv's and ``torch.nn.Conv3d``'s arithmetic); ``padding`` None
    is :func:`default_padding`: odd kernels centred, even kernels from 0. With it, for odd kernels
    offset ``K-1-k`` is the negation of offset ``k`` and the centre is ``K // 2``.
    """
    size = as_triple(kernel_size, "kernel_size", planar=1)
    dil = as_triple(dilation, "dilation", planar=1)
    pad = default_padding(size, dil) if padding is None else as_triple(padding, "padding", minimum=0, planar=0)
    axes = [[m * d - p for m in range(k)] for k, d, p in zip(size, dil, pad)]
    rows = [(dx, dy, dz) for dz, dy, dx in itertools.product(axes[2], axes[1], axes[0])]
    return torch.tensor(rows, dtype=torch.int32)
