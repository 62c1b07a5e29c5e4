// The eval-mode batch-norm end of a block of rows, one pass: y = relu?(x * scale + shift [+ residual])
// per channel over rows [0, rows) of [rows, C] features. Shared by the affine_relu op and the fused
// conv's epilogue, which runs it on each block of output rows while the block is still in L2.
#pragma once

#include <algorithm>
#include <cstdint>

namespace pointsparse {

// x and y may be the same rows (in place); residual may be null.
template <typename T>
void affine_relu_rows(const T* x, T* y, int64_t rows, int64_t C, const T* __restrict__ scale,
                      const T* __restrict__ shift, const T* residual, bool relu) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = x + i * C;
    T* out = y + i * C;
    if (residual) {
      const T* res = residual + i * C;
      if (relu) {
        for (int64_t c = 0; c < C; ++c) out[c] = std::max(row[c] * scale[c] + shift[c] + res[c], T(0));
      } else {
        for (int64_t c = 0; c < C; ++c) out[c] = row[c] * scale[c] + shift[c] + res[c];
      }
    } else if (relu) {
      for (int64_t c = 0; c < C; ++c) out[c] = std::max(row[c] * scale[c] + shift[c], T(0));
    } else {
      for (int64_t c = 0; c < C; ++c) out[c] = row[c] * scale[c] + shift[c];
    }
  }
}

}  // namespace pointsparse
