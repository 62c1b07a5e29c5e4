// Input validation of the convolution ops, shared by every dataflow and device. Failures raise
// Python TypeError / ValueError naming the tensor and the bound. Row indices are bounds-checked
// here on the CPU; on CUDA, where reading a range back would synchronise every call, the kernels
// assert each index and kernel maps are checked once when built or handed in.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pointsparse {

// Checked, contiguous operands of a convolution over per-offset pairs (CSR).
struct ConvPairs {
  at::Tensor feats;       // [N_in, C_in]
  at::Tensor offset_ptr;  // int64 [K + 1] on the CPU
  at::Tensor in_idx;      // int32 [P], values in [0, N_in) (checked here on the CPU only)
  at::Tensor out_idx;     // int32 [P], values in [0, num_out) (checked here on the CPU only)
  int64_t K;
  int64_t identity_offset;  // -1 or an offset with pairs i -> i for every row

  const int64_t* ptr() const { return offset_ptr.data_ptr<int64_t>(); }
  int64_t pairs(int64_t k) const { return ptr()[k + 1] - ptr()[k]; }
};

// Forward: weight [K, C_in, C_out] of feats' dtype and device; out has num_out rows.
ConvPairs check_conv_forward(const at::Tensor& feats, const at::Tensor& weight,
                             const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                             const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset);

// Weight gradient: grad_out [num_out, C_out] of feats' dtype and device. Returns grad_out contiguous
// through *grad_out_contiguous.
ConvPairs check_conv_weight_grad(const at::Tensor& feats, const at::Tensor& grad_out,
                                 const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                 const at::Tensor& out_idx, int64_t identity_offset,
                                 at::Tensor* grad_out_contiguous);

// Checked, contiguous operands of an implicit GEMM (conv_implicit).
struct ImplicitInputs {
  at::Tensor feats;       // [N_in, C_in]
  at::Tensor neighbors;   // int32 [N_out, K], entries in [-1, N_in)
  at::Tensor order;       // int32 [S, N_out], each row a permutation of the output rows
  at::Tensor tile_masks;  // int32 [S, T, W], T = ceil(N_out / tile_rows), W = ceil(K / 32)
  int64_t splits, tiles, words, tile_rows;
};

// Forward of the implicit GEMM: weight [K, C_in, C_out] of feats' dtype and device. On the CPU the
// entries of neighbors and order are checked (order: a permutation per split); on CUDA the kernel
// asserts them.
ImplicitInputs check_conv_implicit(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& neighbors,
                                   const at::Tensor& order, const at::Tensor& tile_masks, int64_t tile_rows);

// Weight gradient of the implicit GEMM: grad_out [N_out, C_out] of feats' dtype and device, the
// table, order and tile masks as for the forward (K = neighbors.size(1)); entries as there when
// `entries` (CPU). The returned inputs leave grad_out out: contiguous it is the caller's.
ImplicitInputs check_conv_implicit_weight_grad(const at::Tensor& feats, const at::Tensor& grad_out,
                                               const at::Tensor& neighbors, const at::Tensor& order,
                                               const at::Tensor& tile_masks, int64_t tile_rows, bool entries);

// The epilogue of conv_implicit_affine_relu with n_out x C_out outputs: scale and shift floating
// [C_out] on feats' device, residual (when given) [n_out, C_out] of feats' dtype and device.
void check_implicit_epilogue(const at::Tensor& feats, int64_t n_out, int64_t C_out, const at::Tensor& scale,
                             const at::Tensor& shift, const std::optional<at::Tensor>& residual);

// pos: int32 [rows, K] on feats' device, pair index of (row, offset) or -1 (grouped dataflow).
// Shape, dtype and device only: the entries are checked where they are read (an error on the CPU,
// a device-side assert on CUDA). Returns pos contiguous.
at::Tensor check_pair_positions(const at::Tensor& pos, int64_t rows, const ConvPairs& pairs, const char* name);

}  // namespace pointsparse
