// Output-row reordering of the implicit GEMM (pointsparse::kmap_reorder), written once for every
// device: the sorts are ATen's, the per-element mask and tile kernels come from the backend.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace pointsparse {

struct ReorderKernels {
  // masks [N, W] int32 = split_mask_element of every row and word for offsets [begin, end).
  void (*split_masks)(const at::Tensor& neighbors, int64_t begin, int64_t end, at::Tensor& masks);
  // tile_masks [T, W] int32 = tile_or_element of masks [N, W] in row order order [N].
  void (*tile_or)(const at::Tensor& masks, const at::Tensor& order, int64_t tile_rows, at::Tensor& tile_masks);
};

// neighbors int32 [N, K] -> (order int32 [splits, N], tile_masks int32 [splits, ceil(N / tile_rows),
// ceil(K / 32)]). Split s covers offsets [s * K / splits, (s + 1) * K / splits); with reorder its rows
// are stably sorted by mask, descending (the mask as an integer, bit k weighing 2^k), else
// kept in order.
std::tuple<at::Tensor, at::Tensor> kmap_reorder_driver(const at::Tensor& neighbors, int64_t splits,
                                                       int64_t tile_rows, bool reorder, const ReorderKernels& kernels);

}  // namespace pointsparse
