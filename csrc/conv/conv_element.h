// Per-element gather and scatter of feature rows, shared by the CPU loops and the CUDA kernels.
//
// src / dst are row-major [rows, C]; idx holds int32 row indices. Within one kernel offset every
// output row occurs at most once, so a scatter-add over one offset's pairs never races.
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace pointsparse {

// dst[p, c] = src[idx[p], c]
template <typename T>
PS_HD void gather_element(const T* src, const int32_t* idx, int64_t p, int64_t c, int64_t C, T* dst) {
  dst[p * C + c] = src[int64_t(idx[p]) * C + c];
}

// dst[idx[p], c] += src[p, c]. Acc is the accumulation type (float for half / bfloat16 sources), so
// a sum over offsets rounds once, at the end, not after every offset.
template <typename T, typename Acc>
PS_HD void scatter_add_element(const T* src, const int32_t* idx, int64_t p, int64_t c, int64_t C,
                               Acc* dst) {
  dst[int64_t(idx[p]) * C + c] += static_cast<Acc>(src[p * C + c]);
}

// Whether row index i lies in [0, rows): the CUDA kernels assert it per element instead of a host
// check per call (bounds are checked once, where a kernel map is built or handed in).
PS_HD bool row_in_range(int32_t i, int64_t rows) { return i >= 0 && int64_t(i) < rows; }

}  // namespace pointsparse
