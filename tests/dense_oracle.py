"""The dense oracle: scatter to a grid, run F.conv3d / F.conv_transpose3d, gather at the outputs."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pointsparse import SparseTensor


def dense_weight(weight: Tensor, kernel_size: Tuple[int, int, int], transposed: bool) -> Tensor:
    """[K, C_in, C_out] in kernel_offsets order (x fastest) -> F.conv3d's [C_out, C_in, kx, ky, kz]
    or F.conv_transpose3d's [C_in, C_out, kx, ky, kz]."""
    kx, ky, kz = kernel_size
    grid = weight.reshape(kz, ky, kx, weight.shape[1], weight.shape[2])  # [kz, ky, kx, C_in, C_out]
    return grid.permute(3, 4, 2, 1, 0) if transposed else grid.permute(4, 3, 2, 1, 0)


def padding(kernel_size, dilation) -> Tuple[int, int, int]:
    # Odd kernels are centred: offset m * d - p = (m - k // 2) * d. Even kernels start at 0.
    return tuple((k // 2) * d if k % 2 else 0 for k, d in zip(kernel_size, dilation))


def grid_shape(x: SparseTensor, margin: int) -> Tuple[int, int, int]:
    top = (x.coords[:, 1:].max(0).values // torch.tensor(x.stride, device=x.coords.device)).tolist() if x.coords.shape[0] else [0] * 3
    return tuple(int(t) + 1 + margin for t in top)


def gather(dense: Tensor, coords: Tensor, stride: Tuple[int, int, int]) -> Tensor:
    """Rows [N, C] of a dense [B, C, X, Y, Z] at coords / stride."""
    index = (coords[:, 1:] // torch.tensor(stride, device=coords.device)).long()
    return dense[coords[:, 0].long(), :, index[:, 0], index[:, 1], index[:, 2]]


def dense_conv(x: SparseTensor, weight: Tensor, kernel_size, stride, dilation, transposed: bool,
               out_coords: Tensor, out_stride) -> Tensor:
    """Features [N_out, C_out] at out_coords of the dense convolution of x (coords >= 0)."""
    margin = (max(kernel_size) + 1) * max(dilation)
    grid = x.dense(grid_shape(x, margin))                                       # [B, C_in, X, Y, Z]
    conv = F.conv_transpose3d if transposed else F.conv3d
    out = conv(grid, dense_weight(weight, kernel_size, transposed), stride=stride,
               padding=padding(kernel_size, dilation), dilation=dilation)
    return gather(out, out_coords, out_stride)
