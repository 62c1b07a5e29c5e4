// Gather-GEMM-scatter convolution over per-offset pairs (CSR), written once for every device:
// the offsets loop, the grouping of offsets into batched GEMMs and the GEMMs themselves (ATen:
// oneDNN/MKL on CPU, cuBLAS on CUDA) live here, the row gather / scatter kernels come from the
// backend.
#pragma once

#include <ATen/ATen.h>

#include "conv_element.h"

namespace pointsparse {

struct RowKernels {
  // dst[p] = src[idx[p]] for p < n. src [N, C], dst [n, C] contiguous; idx: n int32 on src's device.
  void (*gather)(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst);
  // dst[idx[p]] += src[p] for p < n; idx values distinct. src [n, C], dst [M, C] contiguous, of
  // src's dtype or, for half / bfloat16 src, float32 (the accumulator across offsets).
  void (*scatter_add)(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst);
  // dst [table.count, table.rows, C] = rows idx[begin[s] + r] of src [N, C], zero past pairs[s].
  void (*gather_padded)(const at::Tensor& src, const int32_t* idx, const SlotTable& table, at::Tensor& dst);
  // acc [N, C] (float32 for half / bfloat16 product) += the valid rows of product [count, rows, C]:
  // row r of slot s goes to row idx[begin[s] + r], and pos int32 [N, K] names the same pairs by
  // output row. Deterministic without atomics either way: CUDA walks output rows through pos in
  // one launch (scatter_slots_row), the CPU walks the slots in order, the rows of one in parallel.
  void (*scatter_slots)(const at::Tensor& product, const int32_t* idx, const at::Tensor& pos,
                        const SlotTable& table, at::Tensor& acc);
};

// out [num_out, C_out] = sum_k scatter(out_idx_k, gather(feats, in_idx_k) @ weight[k]).
// feats [N_in, C_in]; weight [K, C_in, C_out] (any strides); offset_ptr int64 [K + 1] on CPU;
// in_idx, out_idx int32 [P] on feats' device. identity_offset >= 0 names an offset whose pairs
// are i -> i for every row (submanifold centre): computed as one GEMM, no gather or scatter.
// Half / bfloat16 accumulate across offsets in float32 and round once.
at::Tensor conv_forward_driver(const at::Tensor& feats, const at::Tensor& weight,
                               const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset,
                               const RowKernels& rows);

// grad_weight [K, C_in, C_out]: grad_weight[k] = gather(feats, in_idx_k)^T @ gather(grad_out, out_idx_k).
at::Tensor conv_weight_grad_driver(const at::Tensor& feats, const at::Tensor& grad_out,
                                   const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                   const at::Tensor& out_idx, int64_t identity_offset,
                                   const RowKernels& rows);

// The same convolution with the offsets grouped by plan (format in csrc/ops.cpp, conv_grouped):
// a batched group is gathered into one zero-padded [G, M, C_in] buffer, multiplied by its weights
// stacked in group order with one bmm and scattered output-stationary through out_pos int32
// [num_out, K] (pair index of output row o at offset k, -1 if none); other offsets run one GEMM
// each. Equal to conv_forward_driver up to rounding.
at::Tensor conv_grouped_driver(const at::Tensor& feats, const at::Tensor& weight,
                               const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, const at::Tensor& out_pos, int64_t num_out,
                               int64_t identity_offset, at::IntArrayRef plan, const RowKernels& rows);

// Weight gradient by plan: one bmm of the zero-padded gathered inputs and output gradients per
// batched group, one GEMM per other offset.
at::Tensor conv_grouped_weight_grad_driver(const at::Tensor& feats, const at::Tensor& grad_out,
                                           const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                           const at::Tensor& out_idx, int64_t identity_offset,
                                           at::IntArrayRef plan, const RowKernels& rows);

}  // namespace pointsparse
