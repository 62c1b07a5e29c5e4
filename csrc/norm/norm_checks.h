// Checks of batch-norm operands, shared by the norm ops and the fused conv's batch-norm epilogue.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pointsparse {

// x: contiguous float32 / float64 [N, C].
void check_features(const at::Tensor& x, const char* name);

// v: contiguous [C] of x's dtype and device.
void check_channel_vector(const at::Tensor& v, const at::Tensor& x, const char* name);

// The operands of y = relu?(x * scale + shift [+ residual]): x features, scale and shift channel
// vectors of x, residual (when given) features of x's shape and dtype.
void check_affine_operands(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           const std::optional<at::Tensor>& residual);

}  // namespace pointsparse
