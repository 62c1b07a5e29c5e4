// Helpers shared by the CPU kernel-map files.
#pragma once

#include <ATen/ATen.h>

namespace pointsparse {

// coords int32 [N, 4], contiguous and already checked -> packed keys int64 [N].
at::Tensor pack_rows_cpu(const at::Tensor& coords);

}  // namespace pointsparse
