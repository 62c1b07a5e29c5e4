"""Kernel offsets in the one order every weight ``[K, C_in, C_out]`` uses."""

import itertools
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

IntOrTriple = Union[int, Sequence[int]]


def as_triple(value: IntOrTriple, name: str, minimum: int = 1) -> Tuple[int, int, int]:
    """An int or 3 ints, each an int >= minimum, as a 3-tuple; ValueError / TypeError otherwise."""
    triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in triple):
        raise TypeError(f"{name} must be an int or 3 ints, got {value!r}")
    if min(triple) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return triple


def _axis_offsets(size: int) -> range:
    # Odd sizes are centred (-(k//2) .. k//2); even sizes run 0 .. k-1.
    return range(-(size // 2), size // 2 + 1) if size % 2 else range(size)


def kernel_offsets(kernel_size: IntOrTriple, dilation: IntOrTriple = 1) -> Tensor:
    """Offsets ``[K, 3]`` int32 of a kernel, in units of the input tensor stride, dilation applied.

    Order: x varies fastest, then y, then z (offset ``k = ix + kx * (iy + ky * iz)``), matching the
    odd-kernel order of TorchSparse and MinkowskiEngine. For odd kernels offset ``K-1-k`` is the
    negation of offset ``k`` and the centre is ``K // 2``.
    """
    size = as_triple(kernel_size, "kernel_size")
    dil = as_triple(dilation, "dilation")
    rows = [
        (dx * dil[0], dy * dil[1], dz * dil[2])
        for dz, dy, dx in itertools.product(*(_axis_offsets(s) for s in reversed(size)))
    ]
    return torch.tensor(rows, dtype=torch.int32)
