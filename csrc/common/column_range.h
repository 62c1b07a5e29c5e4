// Per-column minimum and maximum of an int32 tensor, the one reduction behind the range checks of
// coordinates and row indices. A plain parallel loop on the CPU (ATen's column reduction over
// [N, 4] is several times slower there), at::aminmax elsewhere.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pointsparse {

struct ColumnRange {
  std::vector<int32_t> lo, hi;  // one entry per column (a 1-D tensor has one column)
};

// values: int32 [N] or [N, C] with N > 0.
ColumnRange column_range(const at::Tensor& values);

// column_range of values, and flags (int32 [F] on values' device, set by a kernel beside them) read
// into flag_values: off the CPU in the same copy as the range, one synchronisation for both.
ColumnRange column_range(const at::Tensor& values, const at::Tensor& flags, std::vector<int32_t>& flag_values);

}  // namespace pointsparse
