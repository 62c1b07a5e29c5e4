#include "kmap_reorder.h"

#include "kmap_checks.h"

#include <vector>

namespace pointsparse {

std::tuple<at::Tensor, at::Tensor> kmap_reorder_driver(const at::Tensor& neighbors_, int64_t splits,
                                                       int64_t tile_rows, bool reorder, const ReorderKernels& kernels) {
  check_neighbors(neighbors_);
  const at::Tensor neighbors = neighbors_.contiguous();  // [N, K]
  const int64_t n = neighbors.size(0), K = neighbors.size(1), words = (K + 31) / 32;
  TORCH_CHECK_VALUE(splits >= 1 && splits <= std::max<int64_t>(K, 1), "splits must be in [1, max(K, 1) = ",
                    std::max<int64_t>(K, 1), "], got ", splits);
  TORCH_CHECK_VALUE(tile_rows >= 1, "tile_rows must be >= 1, got ", tile_rows);
  TORCH_CHECK_VALUE(n < (int64_t{1} << 31), "at most 2^31 - 1 rows");
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const at::TensorOptions ints = neighbors.options();
  std::vector<at::Tensor> orders, tile_masks;
  for (int64_t s = 0; s < splits; ++s) {
    const int64_t begin = s * K / splits, end = (s + 1) * K / splits;
    at::Tensor masks = at::empty({n, words}, ints);  // [N, W]
    kernels.split_masks(neighbors, begin, end, masks);
    at::Tensor order = at::arange(n, ints.dtype(at::kLong));  // [N]
    if (reorder && n > 0) {
      // The mask as one integer (bit k weighs 2^k): stable sorts from the least significant word up,
      // so the last, most significant word decides first. Words outside the split are 0.
      for (int64_t w = begin / 32; w <= (end - 1) / 32 && end > begin; ++w) {
        const at::Tensor key = masks.select(1, w).index_select(0, order).to(at::kLong).bitwise_and(0xFFFFFFFFLL);
        order = order.index_select(0, std::get<1>(at::sort(key, /*stable=*/true, 0, /*descending=*/true)));
      }
    }
    at::Tensor order32 = order.to(at::kInt);
    at::Tensor tiled = at::empty({tiles, words}, ints);  // [T, W]
    kernels.tile_or(masks, order32, tile_rows, tiled);
    orders.push_back(order32);
    tile_masks.push_back(tiled);
  }
  return {at::stack(orders), at::stack(tile_masks)};
}

}  // namespace pointsparse
