// Gather-GEMM-scatter convolution over per-offset pairs (CSR), written once for every device:
// the offsets loop and the GEMMs (ATen: oneDNN/MKL on CPU, cuBLAS on CUDA) live here, the row
// gather / scatter kernels come from the backend.
#pragma once

#include <ATen/ATen.h>

namespace pointsparse {

struct RowKernels {
  // dst[p] = src[idx[p]] for p < n. src [N, C], dst [n, C] contiguous; idx: n int32 on src's device.
  void (*gather)(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst);
  // dst[idx[p]] += src[p] for p < n; idx values distinct. src [n, C], dst [M, C] contiguous, of
  // src's dtype or, for half / bfloat16 src, float32 (the accumulator across offsets).
  void (*scatter_add)(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst);
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

}  // namespace pointsparse
