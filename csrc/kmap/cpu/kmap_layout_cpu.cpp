// CPU packing of coordinates and the CSR / bitmask layouts derived from a neighbour table.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../../common/cpu_isa.h"
#include "../kmap_checks.h"
#include "../kmap_reorder.h"
#include "../kmap_element.h"
#include "kmap_cpu.h"

namespace pointsparse {

at::Tensor pack_rows_cpu(const at::Tensor& coords) {
  const int64_t n = coords.size(0);
  at::Tensor keys = at::empty({n}, coords.options().dtype(at::kLong));  // [N]
  const int32_t* c = coords.data_ptr<int32_t>();
  int64_t* k = keys.data_ptr<int64_t>();
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) k[i] = pack_coord(c + 4 * i);
  });
  return keys;
}

namespace {

constexpr int64_t kRowChunk = 8192;

at::Tensor pack_coords_cpu(const at::Tensor& coords) {
  check_coords(coords, "coords");
  return pack_rows_cpu(coords.contiguous());
}

// Presence bits of one row's neighbours [0, n), n <= 64: bit k set where row[k] >= 0 (two words
// of the implicit GEMM's split masks, the shared per-element logic).
uint64_t presence_bits(const int32_t* row, int64_t n) {
  return uint64_t(uint32_t(split_mask_element(row, 0, n, 0))) |
         uint64_t(uint32_t(split_mask_element(row, 0, n, 1))) << 32;
}

#if defined(__x86_64__)
// The same with one compare per 16 neighbours (a 27-offset row: two instead of 27 scalar steps).
__attribute__((target("avx512f"))) uint64_t presence_bits_avx512(const int32_t* row, int64_t n) {
  uint64_t bits = 0;
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 lanes = n - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - k)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi32(lanes, row + k);
    bits |= uint64_t(_mm512_mask_cmpge_epi32_mask(lanes, v, _mm512_setzero_si512())) << k;
  }
  return bits;
}
#endif

using PresenceBits = uint64_t (*)(const int32_t*, int64_t);

PresenceBits presence_bits_for_cpu() {
#if defined(__x86_64__)
  if (cpu_isa() == Isa::kAvx512) return &presence_bits_avx512;
#endif
  return &presence_bits;
}

// The two passes of kmap_csr over rows [begin, end) of a [N, K] table. Not inlined into the
// parallel loops, whose register pressure made GCC keep the bits and positions on the stack.

// Each row's presence bits (64 offsets a word) into present [N, words], and the pairs of each
// offset added to count [K].
__attribute__((noinline)) void count_pairs(const int32_t* __restrict nbr, int64_t K, int64_t words, int64_t begin,
                                           int64_t end, PresenceBits presence, uint64_t* __restrict present,
                                           int64_t* __restrict count) {
  for (int64_t o = begin; o < end; ++o) {
    for (int64_t w = 0; w < words; ++w) {
      uint64_t bits = presence(nbr + o * K + 64 * w, std::min<int64_t>(64, K - 64 * w));
      present[o * words + w] = bits;
      for (; bits != 0; bits &= bits - 1) ++count[64 * w + __builtin_ctzll(bits)];
    }
  }
}

// Each present neighbour k of row o becomes the pair (row[k], o) at pos[k]++, visiting set bits
// only (most neighbours are absent).
__attribute__((noinline)) void write_pairs(const int32_t* __restrict nbr, int64_t K, int64_t words, int64_t begin,
                                           int64_t end, const uint64_t* __restrict present, int64_t* __restrict pos,
                                           int32_t* __restrict in_idx, int32_t* __restrict out_idx) {
  for (int64_t o = begin; o < end; ++o) {
    const int32_t* row = nbr + o * K;
    for (int64_t w = 0; w < words; ++w) {
      const int32_t* word_row = row + 64 * w;
      int64_t* word_pos = pos + 64 * w;
      for (uint64_t bits = present[o * words + w]; bits != 0; bits &= bits - 1) {
        const int k = __builtin_ctzll(bits);
        const int64_t p = word_pos[k]++;
        in_idx[p] = word_row[k];
        out_idx[p] = int32_t(o);
      }
    }
  }
}

// Two passes over row chunks: count pairs per (chunk, offset), then write each chunk's pairs at
// its prefix-sum position, so pairs of an offset come out with ascending output rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kmap_csr_cpu(const at::Tensor& neighbors_) {
  check_neighbors(neighbors_);
  const at::Tensor neighbors = neighbors_.contiguous();
  const int64_t n = neighbors.size(0), K = neighbors.size(1), words = (K + 63) / 64;
  const int64_t chunks = (n + kRowChunk - 1) / kRowChunk;
  const int32_t* nbr = neighbors.data_ptr<int32_t>();
  const PresenceBits presence = presence_bits_for_cpu();
  std::vector<uint64_t> present(n * words);  // [N, words]
  std::vector<int64_t> start(chunks * K, 0);  // [chunks, K]: count, then write position
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      count_pairs(nbr, K, words, c * kRowChunk, std::min(n, (c + 1) * kRowChunk), presence, present.data(),
                  start.data() + c * K);
    }
  });
  at::Tensor offset_ptr = at::empty({K + 1}, neighbors.options().dtype(at::kLong));  // [K + 1]
  int64_t* ptr = offset_ptr.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t k = 0; k < K; ++k) {
    ptr[k] = total;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t count = start[c * K + k];
      start[c * K + k] = total;
      total += count;
    }
  }
  ptr[K] = total;
  at::Tensor in_idx = at::empty({total}, neighbors.options());   // [P]
  at::Tensor out_idx = at::empty({total}, neighbors.options());  // [P]
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      write_pairs(nbr, K, words, c * kRowChunk, std::min(n, (c + 1) * kRowChunk), present.data(),
                  start.data() + c * K, in_idx.data_ptr<int32_t>(), out_idx.data_ptr<int32_t>());
    }
  });
  return {offset_ptr, in_idx, out_idx};
}

at::Tensor kmap_bitmask_cpu(const at::Tensor& neighbors_) {
  check_neighbors(neighbors_);
  const at::Tensor neighbors = neighbors_.contiguous();
  const int64_t n = neighbors.size(0);
  const int32_t K = int32_t(neighbors.size(1));
  const int32_t words = (K + 31) / 32;
  at::Tensor bitmask = at::empty({n, words}, neighbors.options());  // [N_out, W]
  const int32_t* nbr = neighbors.data_ptr<int32_t>();
  int32_t* bits = bitmask.data_ptr<int32_t>();
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int32_t w = 0; w < words; ++w) bitmask_element(nbr + o * K, K, w, bits + o * words);
    }
  });
  return bitmask;
}

// The range is checked even when `checked` (one vectorised pass; a wrong entry would write out of
// bounds).
at::Tensor kmap_transpose_cpu(const at::Tensor& neighbors_, int64_t num_in, bool /*checked*/) {
  auto [transposed, neighbors] = prepare_transpose(neighbors_, num_in, /*checked=*/false);  // [N_in, K], [N_out, K]
  const int64_t n = neighbors.size(0), K = neighbors.size(1);
  const int32_t* nbr = neighbors.data_ptr<int32_t>();
  int32_t* out = transposed.data_ptr<int32_t>();
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t k = 0; k < K; ++k) transpose_element(nbr, K, o, k, num_in, out);
    }
  });
  return transposed;
}

void split_masks_cpu(const at::Tensor& neighbors, int64_t begin, int64_t end, at::Tensor& masks) {
  const int64_t n = neighbors.size(0), K = neighbors.size(1), words = masks.size(1);
  const int32_t* nbr = neighbors.data_ptr<int32_t>();
  int32_t* out = masks.data_ptr<int32_t>();
  at::parallel_for(0, n, 2048, [&](int64_t first, int64_t last) {
    for (int64_t o = first; o < last; ++o) {
      for (int64_t w = 0; w < words; ++w) out[o * words + w] = split_mask_element(nbr + o * K, begin, end, w);
    }
  });
}

void tile_or_cpu(const at::Tensor& masks, const at::Tensor& order, int64_t tile_rows, at::Tensor& tile_masks) {
  const int64_t n = masks.size(0), words = masks.size(1), tiles = tile_masks.size(0);
  const int32_t* m = masks.data_ptr<int32_t>();
  const int32_t* rows = order.data_ptr<int32_t>();
  int32_t* out = tile_masks.data_ptr<int32_t>();
  at::parallel_for(0, tiles, 256, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      for (int64_t w = 0; w < words; ++w) out[t * words + w] = tile_or_element(m, rows, n, words, tile_rows, t, w);
    }
  });
}

constexpr ReorderKernels kCpuReorder{&split_masks_cpu, &tile_or_cpu};

std::tuple<at::Tensor, at::Tensor> kmap_reorder_cpu(const at::Tensor& neighbors, int64_t splits, int64_t tile_rows,
                                                    bool reorder) {
  return kmap_reorder_driver(neighbors, splits, tile_rows, reorder, kCpuReorder);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("kmap_reorder", &kmap_reorder_cpu);
  m.impl("kmap_transpose", &kmap_transpose_cpu);
  m.impl("pack_coords", &pack_coords_cpu);
  m.impl("kmap_csr", &kmap_csr_cpu);
  m.impl("kmap_bitmask", &kmap_bitmask_cpu);
}

}  // namespace pointsparse
