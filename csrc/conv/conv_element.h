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

// Channels c = first, first + kStep, ... < C of one row: a CPU loop walks them all (kStep 1, a loop
// the compiler vectorises), a CUDA thread its share (first = lane, kStep = lanes), so the per-row
// work (index reads, pos lookups) is done once per row.

// dst [count, rows, C]: row r of slot s is src[idx[begin[s] + r]] for r < pairs[s], else zeros.
template <int kStep, typename T>
PS_HD void gather_padded_row(const T* src, const int32_t* idx, const SlotTable& table, int64_t s, int64_t r,
                             int64_t first, int64_t C, T* dst) {
  T* out = dst + (s * table.rows + r) * C;
  if (r < table.pairs[s]) {
    const T* in = src + int64_t(idx[table.begin[s] + r]) * C;
    for (int64_t c = first; c < C; c += kStep) out[c] = in[c];
  } else {
    for (int64_t c = first; c < C; c += kStep) out[c] = T(0);
  }
}

// Output-stationary scatter of one group into row o: acc[o] += product[s, p - begin[s]] for every
// slot s, in slot order, whose offset has a pair p at row o (p = pos[o, offset[s]], -1 if none).
// Each thread owns its (o, c) entries: no atomics, a fixed order of the sum, deterministic results.
// product [count, rows, C]; pos int32 [N, K]; acc [N, C]. Returns false (and skips the entry) where
// pos names a pair outside its offset's range; the callers turn that into an error.
template <int kStep, typename T, typename Acc>
PS_HD bool scatter_slots_row(const T* product, const int32_t* pos, int64_t K, const SlotTable& table, int64_t o,
                             int64_t first, int64_t C, Acc* acc) {
  Acc* out = acc + o * C;
  bool in_range = true;
  for (int32_t s = 0; s < table.count; ++s) {
    const int32_t p = pos[o * K + table.offset[s]];
    if (p < 0) continue;
    const int64_t r = p - table.begin[s];
    if (r < 0 || r >= table.pairs[s]) {
      in_range = false;
      continue;
    }
    const T* in = product + (s * int64_t(table.rows) + r) * C;
    for (int64_t c = first; c < C; c += kStep) out[c] += static_cast<Acc>(in[c]);
  }
  return in_range;
}

// Implicit GEMM, one output element: sum over the offsets k set in mask (words of 32 bits) of
// feats[nb_row[k], c] * weight[k, c, col] over c < C_in, in Acc. An absent neighbour (-1) adds
// nothing, as the zero row of the CPU kernel does. nb_row: [K] neighbours of one output row.
template <typename T, typename Acc>
PS_HD Acc implicit_dot_element(const T* feats, int64_t C_in, const int32_t* nb_row, const int32_t* mask,
                               int64_t words, int64_t K, const T* weight, int64_t C_out, int64_t col) {
  Acc acc = Acc(0);
  for (int64_t w = 0; w < words; ++w) {
    for (uint32_t bits = uint32_t(mask[w]); bits; bits &= bits - 1) {
      const int64_t k = 32 * w + lowest_bit(bits);
      const int32_t i = k < K ? nb_row[k] : -1;
      if (i < 0) continue;
      const T* in = feats + int64_t(i) * C_in;
      const T* wk = weight + k * C_in * C_out + col;
      for (int64_t c = 0; c < C_in; ++c) acc += static_cast<Acc>(in[c]) * static_cast<Acc>(wk[c * C_out]);
    }
  }
  return acc;
}

}  // namespace pointsparse
