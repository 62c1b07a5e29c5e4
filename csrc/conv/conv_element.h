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

namespace pointsparse {

// The offsets of one batched group (grouped gather-GEMM-scatter): slot s holds offset offset[s],
// whose pairs are begin[s] .. begin[s] + pairs[s] of the CSR arrays, padded to `rows` rows. Passed
// by value to the CUDA kernels (2 KB, within the kernel-argument limit), so no host-to-device copy.
constexpr int kMaxGroupSlots = 128;

struct SlotTable {
  int32_t count;  // slots in use, <= kMaxGroupSlots
  int32_t rows;   // padded rows per slot: the largest pairs[s]
  int32_t offset[kMaxGroupSlots];
  int32_t pairs[kMaxGroupSlots];
  int64_t begin[kMaxGroupSlots];
};

// dst [count, rows, C]: dst[s, r, c] = src[idx[begin[s] + r], c] for r < pairs[s], else 0.
template <typename T>
PS_HD void gather_padded_element(const T* src, const int32_t* idx, const SlotTable& table, int64_t s,
                                 int64_t r, int64_t c, int64_t C, T* dst) {
  const int64_t slot_row = s * table.rows + r;
  dst[slot_row * C + c] = r < table.pairs[s] ? src[int64_t(idx[table.begin[s] + r]) * C + c] : T(0);
}

// Output-stationary scatter of one group: acc[o, c] += product[s, p - begin[s], c] for every slot s
// (in slot order) whose offset has a pair p at row o, p = pos[o, offset[s]] (-1 if none). Each thread
// owns its (o, c): no atomics, and the order of the sum is fixed, so results are deterministic.
// product [count, rows, C]; pos int32 [N, K]; acc [N, C]. Returns false (and skips the entry) where
// pos names a pair outside its offset's range; the callers turn that into an error.
template <typename T, typename Acc>
PS_HD bool scatter_slots_element(const T* product, const int32_t* pos, int64_t K, const SlotTable& table,
                                 int64_t o, int64_t c, int64_t C, Acc* acc) {
  Acc sum = acc[o * C + c];
  bool in_range = true;
  for (int32_t s = 0; s < table.count; ++s) {
    const int32_t p = pos[o * K + table.offset[s]];
    if (p < 0) continue;
    const int64_t r = p - table.begin[s];
    if (r < 0 || r >= table.pairs[s]) {
      in_range = false;
      continue;
    }
    sum += static_cast<Acc>(product[(s * int64_t(table.rows) + r) * C + c]);
  }
  acc[o * C + c] = sum;
  return in_range;
}

}  // namespace pointsparse
