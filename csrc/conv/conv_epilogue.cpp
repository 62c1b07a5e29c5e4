#include "conv_epilogue.h"

namespace pointsparse {

at::Tensor affine_relu_after(at::Tensor y, const at::Tensor& scale, const at::Tensor& shift,
                             const std::optional<at::Tensor>& residual, bool relu) {
  const at::ScalarType math = y.scalar_type();
  y = y * scale.to(math) + shift.to(math);
  if (residual) y += residual->to(math);
  if (relu) y.relu_();
  return y;
}

}  // namespace pointsparse
