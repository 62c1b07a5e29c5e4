// The CUDA gather-GEMM-scatter's entry points other dataflows reuse.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace pointsparse {

// grad_weight [K, C_in, C_out] of the pairs (the implicit GEMM's weight gradient too).
at::Tensor conv_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out,
                                 const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                 const at::Tensor& out_idx, int64_t identity_offset);

}  // namespace pointsparse
