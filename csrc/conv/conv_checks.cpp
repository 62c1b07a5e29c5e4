#include "conv_checks.h"

#include "../common/column_range.h"

#include <initializer_list>
#include <utility>
#include <vector>

namespace pointsparse {
namespace {

// Devices first, before anything reads data or a CUDA guard is made from one of them: a tensor on
// the wrong device is a ValueError that names it.
void check_devices(const at::Tensor& feats, std::initializer_list<std::pair<const at::Tensor*, const char*>> others,
                   const at::Tensor& offset_ptr) {
  for (const auto& [tensor, name] : others) {
    TORCH_CHECK_VALUE(tensor->device() == feats.device(), name, " is on ", tensor->device(),
                      " but feats are on ", feats.device());
  }
  TORCH_CHECK_VALUE(offset_ptr.device().is_cpu(), "offset_ptr must be on the CPU (it sizes the GEMMs), got ",
                    offset_ptr.device());
}

ConvPairs check_pairs(const at::Tensor& feats, const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                      const at::Tensor& out_idx, int64_t K, int64_t identity_offset) {
  TORCH_CHECK_VALUE(feats.dim() == 2, "feats must have shape [N, C], got ", feats.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(feats.scalar_type()), "feats must be floating point, got ",
                   feats.scalar_type());
  TORCH_CHECK_TYPE(offset_ptr.scalar_type() == at::kLong, "offset_ptr must be int64, got ",
                   offset_ptr.scalar_type());
  TORCH_CHECK_VALUE(offset_ptr.dim() == 1 && offset_ptr.size(0) == K + 1,
                    "offset_ptr must have shape [K + 1] = [", K + 1, "], got ", offset_ptr.sizes());
  for (const at::Tensor* idx : {&in_idx, &out_idx}) {
    TORCH_CHECK_TYPE(idx->scalar_type() == at::kInt, "in_idx and out_idx must be int32, got ",
                     idx->scalar_type());
    TORCH_CHECK_VALUE(idx->dim() == 1, "in_idx and out_idx must be 1-D, got ", idx->sizes());
  }
  TORCH_CHECK_VALUE(in_idx.size(0) == out_idx.size(0), "in_idx and out_idx differ in length: ",
                    in_idx.size(0), " vs ", out_idx.size(0));
  ConvPairs pairs{feats.contiguous(), offset_ptr.contiguous(), in_idx.contiguous(),
                  out_idx.contiguous(), K, identity_offset};
  const int64_t* ptr = pairs.ptr();
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[K] == in_idx.size(0),
                    "offset_ptr must run from 0 to the number of pairs ", in_idx.size(0));
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(ptr[k] <= ptr[k + 1], "offset_ptr must not decrease");
  }
  TORCH_CHECK_VALUE(identity_offset >= -1 && identity_offset < K,
                    "identity_offset must be -1 or an offset index below ", K, ", got ", identity_offset);
  return pairs;
}

// On the CPU a parallel pass per call (no synchronisation involved). Elsewhere reading the range
// back would stall the host on every call, so the kernels assert each index instead and the range
// is checked once, where a kernel map is built or handed in (pointsparse/kmap.py).
void check_index_bounds(const at::Tensor& idx, int64_t rows, const char* name) {
  if (idx.numel() == 0 || !idx.device().is_cpu()) return;
  const ColumnRange range = column_range(idx);
  const int64_t min_value = range.lo[0], max_value = range.hi[0];
  TORCH_CHECK_VALUE(min_value >= 0 && max_value < rows, name, " must index rows in [0, ", rows,
                    "), got values in [", min_value, ", ", max_value, "]");
}

void check_identity(const ConvPairs& pairs, int64_t num_out) {
  if (pairs.identity_offset < 0) return;
  TORCH_CHECK_VALUE(pairs.feats.size(0) == num_out && pairs.pairs(pairs.identity_offset) == num_out,
                    "identity_offset needs one pair per row and as many outputs as inputs");
}

}  // namespace

ConvPairs check_conv_forward(const at::Tensor& feats, const at::Tensor& weight,
                             const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                             const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset) {
  check_devices(feats, {{&weight, "weight"}, {&in_idx, "in_idx"}, {&out_idx, "out_idx"}}, offset_ptr);
  TORCH_CHECK_VALUE(weight.dim() == 3, "weight must have shape [K, C_in, C_out], got ", weight.sizes());
  ConvPairs pairs = check_pairs(feats, offset_ptr, in_idx, out_idx, weight.size(0), identity_offset);
  TORCH_CHECK_VALUE(weight.size(1) == feats.size(1), "weight expects ", weight.size(1),
                    " input channels but feats have ", feats.size(1));
  TORCH_CHECK_TYPE(weight.scalar_type() == feats.scalar_type(), "weight dtype ", weight.scalar_type(),
                   " differs from feats dtype ", feats.scalar_type());
  TORCH_CHECK_VALUE(num_out >= 0, "num_out must be >= 0, got ", num_out);
  check_index_bounds(pairs.in_idx, feats.size(0), "in_idx");
  check_index_bounds(pairs.out_idx, num_out, "out_idx");
  check_identity(pairs, num_out);
  return pairs;
}

ConvPairs check_conv_weight_grad(const at::Tensor& feats, const at::Tensor& grad_out,
                                 const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                 const at::Tensor& out_idx, int64_t identity_offset,
                                 at::Tensor* grad_out_contiguous) {
  check_devices(feats, {{&grad_out, "grad_out"}, {&in_idx, "in_idx"}, {&out_idx, "out_idx"}}, offset_ptr);
  const int64_t K = offset_ptr.dim() == 1 ? offset_ptr.size(0) - 1 : -1;
  TORCH_CHECK_VALUE(K >= 1, "offset_ptr must have shape [K + 1] with K >= 1, got ", offset_ptr.sizes());
  ConvPairs pairs = check_pairs(feats, offset_ptr, in_idx, out_idx, K, identity_offset);
  TORCH_CHECK_VALUE(grad_out.dim() == 2, "grad_out must have shape [N_out, C_out], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == feats.scalar_type(), "grad_out dtype ",
                   grad_out.scalar_type(), " differs from feats dtype ", feats.scalar_type());
  check_index_bounds(pairs.in_idx, feats.size(0), "in_idx");
  check_index_bounds(pairs.out_idx, grad_out.size(0), "out_idx");
  check_identity(pairs, grad_out.size(0));
  *grad_out_contiguous = grad_out.contiguous();
  return pairs;
}

namespace {

void check_floating_rows(const at::Tensor& feats) {
  TORCH_CHECK_VALUE(feats.dim() == 2, "feats must have shape [N, C], got ", feats.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(feats.scalar_type()), "feats must be floating point, got ", feats.scalar_type());
}

// The neighbour table, order and tile masks of an implicit GEMM with K offsets; entries (on the CPU):
// the table's rows and the order's permutations too.
ImplicitInputs check_implicit_table(const at::Tensor& feats, int64_t K, const at::Tensor& neighbors,
                                    const at::Tensor& order, const at::Tensor& tile_masks, int64_t tile_rows,
                                    bool entries) {
  for (const auto& [tensor, name] : {std::pair<const at::Tensor*, const char*>{&neighbors, "neighbors"},
                                     {&order, "order"}, {&tile_masks, "tile_masks"}}) {
    TORCH_CHECK_VALUE(tensor->device() == feats.device(), name, " is on ", tensor->device(), " but feats are on ",
                      feats.device());
    TORCH_CHECK_TYPE(tensor->scalar_type() == at::kInt, name, " must be int32, got ", tensor->scalar_type());
  }
  TORCH_CHECK_VALUE(neighbors.dim() == 2 && neighbors.size(1) == K, "neighbors must have shape [N_out, K = ", K,
                    "], got ", neighbors.sizes());
  TORCH_CHECK_VALUE(tile_rows >= 1, "tile_rows must be >= 1, got ", tile_rows);
  const int64_t n_out = neighbors.size(0);
  const int64_t tiles = (n_out + tile_rows - 1) / tile_rows, words = (K + 31) / 32;
  TORCH_CHECK_VALUE(order.dim() == 2 && order.size(0) >= 1 && order.size(1) == n_out,
                    "order must have shape [splits, N_out = ", n_out, "], got ", order.sizes());
  const int64_t splits = order.size(0);
  TORCH_CHECK_VALUE(tile_masks.dim() == 3 && tile_masks.size(0) == splits && tile_masks.size(1) == tiles &&
                        tile_masks.size(2) == words,
                    "tile_masks must have shape [splits, ceil(N_out / tile_rows), ceil(K / 32)] = [", splits, ", ",
                    tiles, ", ", words, "], got ", tile_masks.sizes());
  ImplicitInputs inputs{feats.contiguous(), neighbors.contiguous(), order.contiguous(), tile_masks.contiguous(),
                        splits, tiles, words, tile_rows};
  if (!entries || !feats.device().is_cpu() || n_out == 0) return inputs;
  if (K > 0) {
    const ColumnRange range = column_range(inputs.neighbors.view({-1}));
    TORCH_CHECK_VALUE(range.lo[0] >= -1 && range.hi[0] < feats.size(0), "neighbors must hold -1 or rows in [0, ",
                      feats.size(0), "), got values in [", range.lo[0], ", ", range.hi[0], "]");
  }
  const int32_t* rows = inputs.order.data_ptr<int32_t>();
  for (int64_t split = 0; split < splits; ++split) {
    std::vector<char> seen(n_out, 0);
    for (int64_t j = 0; j < n_out; ++j) {
      const int32_t o = rows[split * n_out + j];
      TORCH_CHECK_VALUE(o >= 0 && o < n_out && !seen[o], "order row ", split, " must be a permutation of [0, ",
                        n_out, ")");
      seen[o] = 1;
    }
  }
  return inputs;
}

}  // namespace

ImplicitInputs check_conv_implicit(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& neighbors,
                                   const at::Tensor& order, const at::Tensor& tile_masks, int64_t tile_rows) {
  TORCH_CHECK_VALUE(weight.device() == feats.device(), "weight is on ", weight.device(), " but feats are on ",
                    feats.device());
  check_floating_rows(feats);
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(1) == feats.size(1), "weight must have shape [K, C_in = ",
                    feats.size(1), ", C_out], got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == feats.scalar_type(), "weight dtype ", weight.scalar_type(),
                   " differs from feats dtype ", feats.scalar_type());
  return check_implicit_table(feats, weight.size(0), neighbors, order, tile_masks, tile_rows, /*entries=*/true);
}

ImplicitInputs check_conv_implicit_weight_grad(const at::Tensor& feats, const at::Tensor& grad_out,
                                               const at::Tensor& neighbors, const at::Tensor& order,
                                               const at::Tensor& tile_masks, int64_t tile_rows, bool entries) {
  TORCH_CHECK_VALUE(grad_out.device() == feats.device(), "grad_out is on ", grad_out.device(), " but feats are on ",
                    feats.device());
  check_floating_rows(feats);
  TORCH_CHECK_TYPE(grad_out.scalar_type() == feats.scalar_type(), "grad_out dtype ", grad_out.scalar_type(),
                   " differs from feats dtype ", feats.scalar_type());
  TORCH_CHECK_VALUE(neighbors.dim() == 2, "neighbors must have shape [N_out, K], got ", neighbors.sizes());
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == neighbors.size(0),
                    "grad_out must have shape [N_out = ", neighbors.size(0), ", C_out], got ", grad_out.sizes());
  return check_implicit_table(feats, neighbors.size(1), neighbors, order, tile_masks, tile_rows, entries);
}

void check_implicit_epilogue(const at::Tensor& feats, int64_t n_out, int64_t C_out, const at::Tensor& scale,
                             const at::Tensor& shift, const std::optional<at::Tensor>& residual) {
  for (const auto& [tensor, name] : {std::pair<const at::Tensor*, const char*>{&scale, "scale"}, {&shift, "shift"}}) {
    TORCH_CHECK_TYPE(at::isFloatingType(tensor->scalar_type()), name, " must be floating point, got ",
                     tensor->scalar_type());
    TORCH_CHECK_VALUE(tensor->dim() == 1 && tensor->size(0) == C_out, name, " must have shape [C_out = ", C_out,
                      "], got ", tensor->sizes());
    TORCH_CHECK_VALUE(tensor->device() == feats.device(), name, " is on ", tensor->device(), " but feats are on ",
                      feats.device());
  }
  if (!residual) return;
  TORCH_CHECK_TYPE(residual->scalar_type() == feats.scalar_type(), "residual dtype ", residual->scalar_type(),
                   " differs from feats dtype ", feats.scalar_type());
  TORCH_CHECK_VALUE(residual->dim() == 2 && residual->size(0) == n_out && residual->size(1) == C_out,
                    "residual must have shape [N_out = ", n_out, ", C_out = ", C_out, "], got ", residual->sizes());
  TORCH_CHECK_VALUE(residual->device() == feats.device(), "residual is on ", residual->device(),
                    " but feats are on ", feats.device());
}

at::Tensor check_pair_positions(const at::Tensor& pos, int64_t rows, const ConvPairs& pairs, const char* name) {
  TORCH_CHECK_TYPE(pos.scalar_type() == at::kInt, name, " must be int32, got ", pos.scalar_type());
  TORCH_CHECK_VALUE(pos.dim() == 2 && pos.size(0) == rows && pos.size(1) == pairs.K, name,
                    " must have shape [", rows, ", ", pairs.K, "], got ", pos.sizes());
  TORCH_CHECK_VALUE(pos.device() == pairs.feats.device(), name, " is on ", pos.device(), " but feats are on ",
                    pairs.feats.device());
  return pos.contiguous();
}

}  // namespace pointsparse
