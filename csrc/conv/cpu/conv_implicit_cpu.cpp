// The CPU implicit GEMM (pointsparse::conv_implicit and its weight gradient): output-stationary
// tiles of (reordered) output rows that walk the offsets their tile needs, accumulators held in
// registers across offsets (the register-blocked kernels of fused_kernels.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../conv_checks.h"
#include "../conv_epilogue.h"
#include "fused_kernels.h"

namespace pointsparse {
namespace {

// Offsets whose bit is set in one tile's mask words, ascending, into `offsets` (reused across tiles).
void tile_offsets(const int32_t* words, int64_t n_words, int64_t K, std::vector<int32_t>& offsets) {
  offsets.clear();
  for (int64_t w = 0; w < n_words; ++w) {
    uint32_t bits = uint32_t(words[w]);
    while (bits) {
      const int32_t k = int32_t(32 * w + __builtin_ctz(bits));
      if (k < K) offsets.push_back(k);
      bits &= bits - 1;
    }
  }
}

// Splits run one after another (the first assigns, the others add: a fixed order of the sum); the
// tiles of one split in parallel, each output row in exactly one tile. (The *_t tables, the pairs and
// symmetric are the gradients' concern: see pointsparse/ops/conv_implicit.py.)
at::Tensor conv_implicit_cpu(const at::Tensor& feats_, const at::Tensor& weight, const at::Tensor& neighbors_,
                             const at::Tensor& order_, const at::Tensor& tile_masks_, const at::Tensor& neighbors_t,
                             const at::Tensor& order_t, const at::Tensor& tile_masks_t, const at::Tensor& offset_ptr,
                             const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t tile_rows, bool symmetric) {
  if (runs_in_float(feats_, weight)) {
    return conv_implicit_cpu(feats_.to(at::kFloat), weight.to(at::kFloat), neighbors_, order_, tile_masks_,
                             neighbors_t, order_t, tile_masks_t, offset_ptr, in_idx, out_idx, tile_rows, symmetric)
        .to(feats_.scalar_type());
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ImplicitInputs in = check_conv_implicit(feats_, weight, neighbors_, order_, tile_masks_, tile_rows);
  const int64_t K = weight.size(0), C_in = weight.size(1), C_out = weight.size(2), n_out = in.neighbors.size(0);
  const Isa isa = cpu_isa();
  const at::Tensor packed = vector_padded_weight(weight, isa);  // [K, C_in, ldw]
  const int64_t ldw = packed.size(2);
  // Not zeroed: split 0 runs every tile, and each row once (order is checked to be a permutation).
  at::Tensor out = at::empty({n_out, C_out}, weight.options());
  if (n_out == 0 || C_out == 0) return out;
  const at::Tensor zero = at::zeros({std::max<int64_t>(C_in, 1)}, weight.options());  // the absent neighbour
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_implicit_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = in.feats.data_ptr<scalar_t>();
    const int32_t* nbr = in.neighbors.data_ptr<int32_t>();
    const int32_t* order = in.order.data_ptr<int32_t>();
    const int32_t* masks = in.tile_masks.data_ptr<int32_t>();
    for (int64_t split = 0; split < in.splits; ++split) {
      auto run = split == 0 ? kernels.implicit_assign : kernels.implicit_add;
      at::parallel_for(0, in.tiles, 1, [&](int64_t first, int64_t last) {
        std::vector<int32_t> offsets;
        offsets.reserve(K);
        for (int64_t t = first; t < last; ++t) {
          tile_offsets(masks + (split * in.tiles + t) * in.words, in.words, K, offsets);
          if (offsets.empty() && split > 0) continue;
          const int64_t begin = t * tile_rows, rows = std::min(tile_rows, n_out - begin);
          run(feats, C_in, nbr, K, order + split * n_out + begin, rows, offsets.data(), int64_t(offsets.size()),
              packed.data_ptr<scalar_t>(), ldw, zero.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C_out);
        }
      });
    }
  });
  return out;
}

// The implicit GEMM, then its epilogue on the output in float (half / bfloat16 outputs round twice
// here, once on CUDA, where the kernel applies it to its float sums).
at::Tensor conv_implicit_affine_relu_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& neighbors,
                                         const at::Tensor& order, const at::Tensor& tile_masks, int64_t tile_rows,
                                         const at::Tensor& scale, const at::Tensor& shift, bool relu,
                                         const std::optional<at::Tensor>& residual) {
  const at::Tensor none = at::empty({0}, neighbors.options());  // the gradients' operands, unread
  const at::Tensor out = conv_implicit_cpu(feats, weight, neighbors, order, tile_masks, none, none, none,
                                           none.to(at::kLong), none, none, tile_rows, false);  // [N_out, C_out]
  check_implicit_epilogue(feats, out.size(0), out.size(1), scale, shift, residual);
  return affine_relu_after(out.to(at::toOpMathType(out.scalar_type())), scale, shift, residual, relu)
      .to(out.scalar_type());
}

// The weight gradient of the implicit GEMM, from the map's pairs: the fused kernels' (deterministic:
// fixed tasks, per-task partial sums reduced in order). The table, order and tile masks (what CUDA
// reads) are checked for shape only.
at::Tensor conv_implicit_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out,
                                         const at::Tensor& neighbors, const at::Tensor& order,
                                         const at::Tensor& tile_masks, int64_t tile_rows, const at::Tensor& offset_ptr,
                                         const at::Tensor& in_idx, const at::Tensor& out_idx) {
  check_conv_implicit_weight_grad(feats, grad_out, neighbors, order, tile_masks, tile_rows, /*entries=*/false);
  return conv_fused_weight_grad_cpu(feats, grad_out, offset_ptr, in_idx, out_idx, -1);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("conv_implicit", &conv_implicit_cpu);
  m.impl("conv_implicit_affine_relu", &conv_implicit_affine_relu_cpu);
  m.impl("conv_implicit_weight_grad", &conv_implicit_weight_grad_cpu);
}

}  // namespace pointsparse
