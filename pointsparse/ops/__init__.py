"""Typed wrappers over ``torch.ops.pointsparse``; importing registers the fake kernels."""

from .conv_fused import conv_fused, conv_fused_affine_relu, conv_fused_weight_grad, linear_fused
from .conv_ggs import conv_gather_scatter, conv_grouped, conv_grouped_weight_grad, conv_weight_grad
from .conv_implicit import conv_implicit, conv_implicit_affine_relu, conv_implicit_weight_grad
from .kmap import (
    BATCH_RANGE,
    COORD_RANGE,
    build_kmap_hash,
    build_kmap_sort,
    coords_hash_table,
    downsample_coords_hash,
    downsample_coords_sort,
    downsample_tiling,
    first_occurrence,
    kmap_bitmask,
    kmap_csr,
    kmap_reorder,
    kmap_tiling,
    kmap_transpose,
    pack_coords,
    unique_coords,
)

__all__ = [
    "BATCH_RANGE",
    "COORD_RANGE",
    "build_kmap_hash",
    "build_kmap_sort",
    "conv_fused",
    "conv_fused_affine_relu",
    "conv_fused_weight_grad",
    "conv_gather_scatter",
    "conv_grouped",
    "conv_grouped_weight_grad",
    "conv_implicit",
    "conv_implicit_affine_relu",
    "conv_implicit_weight_grad",
    "conv_weight_grad",
    "coords_hash_table",
    "downsample_coords_hash",
    "downsample_coords_sort",
    "downsample_tiling",
    "first_occurrence",
    "kmap_bitmask",
    "kmap_csr",
    "kmap_reorder",
    "kmap_tiling",
    "kmap_transpose",
    "linear_fused",
    "pack_coords",
    "unique_coords",
]
