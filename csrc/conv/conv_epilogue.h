// The conv epilogue in ATen, for the paths that apply it after the conv rather than in a kernel's
// store: the CPU implicit op and the CUDA SIMT fallback.
#pragma once

#include <optional>

#include <ATen/ATen.h>

namespace pointsparse {

// relu?(y * scale + shift [+ residual]) in y's dtype: y [N_out, C_out] (pass it in op math, float for
// half / bfloat16, so that the epilogue rounds once), scale and shift [C_out], residual [N_out, C_out].
at::Tensor affine_relu_after(at::Tensor y, const at::Tensor& scale, const at::Tensor& shift,
                             const std::optional<at::Tensor>& residual, bool relu);

}  // namespace pointsparse
