// The implicit GEMM's weight gradient: grad_weight[k] = sum over output rows o with a neighbour i at
// offset k of feats[i]^T grad_out[o], read straight from the neighbour table (no pair lists) in the
// forward's row order, tiles without offset k skipped by their mask.
//
// A block takes one offset k, one tile of kRows input x kCols output channels and one chunk of the
// reorder tiles (split-K over the rows); it writes its partial sum to its own slice of a workspace
// [chunks, K, C_in, C_out], and sum_partials_kernel adds the chunks in a fixed order: deterministic,
// no atomics. Written against the CUDA names only, as implicit_kernels.cuh (the emulation builds it
// for the host too). Raw pointers only; no ATen here.
#pragma once

#include <algorithm>
#include <cstdint>

#include "implicit_kernels.cuh"

namespace pointsparse {
namespace implicit_gemm {
namespace weight_grad {

// The split whose offset range [s * K / splits, (s + 1) * K / splits) holds offset k: its order and
// tile masks are the ones whose bit k is set.
PS_HD int64_t split_of(int64_t k, int64_t K, int64_t splits) {
  int64_t s = 0;
  while ((s + 1) * K / splits <= k) ++s;
  return s;
}

// The rows one block reduces over, a slab at a time: in tile order, the rows of each tile of its
// chunk [first tile, end tile) whose mask has offset k, kSlab rows per slab (a tile's last slab
// padded). The same in every thread of a block.
struct RowCursor {
  const int32_t* masks;  // [tiles, words] of k's split
  int64_t words, tile_rows, n_out, end_tile;
  int64_t word;  // k / 32
  uint32_t bit;  // 1 << k % 32
  int64_t tile = 0, row = 0;

  __device__ void seek(int64_t from) {
    for (tile = from; tile < end_tile && !(uint32_t(masks[tile * words + word]) & bit); ++tile) {
    }
    row = 0;
  }
  __device__ bool done() const { return tile >= end_tile; }
  __device__ int64_t tile_end() const { return min((tile + 1) * tile_rows, n_out); }
  __device__ void advance(int64_t slab) {
    row += slab;
    if (tile * tile_rows + row >= tile_end()) seek(tile + 1);
  }
  // Position in the split's order of the slab's r-th row, or -1 past the tile's end.
  __device__ int64_t position(int64_t r) const {
    const int64_t p = tile * tile_rows + row + r;
    return p < tile_end() ? p : -1;
  }
};

// How a weight gradient is cut along the rows: chunks of tiles_per_chunk reorder tiles, one block
// each per (offset, channel tile). Enough chunks for about target_blocks blocks, no more than the
// tiles, and a workspace of at most max_partials floats.
struct Chunking {
  int64_t chunks, tiles_per_chunk;
};

inline Chunking chunking(int64_t tiles, int64_t blocks_per_chunk, int64_t target_blocks, int64_t partial_size,
                         int64_t max_partials) {
  int64_t chunks = (target_blocks + blocks_per_chunk - 1) / blocks_per_chunk;
  chunks = std::max<int64_t>(1, std::min({chunks, tiles, max_partials / std::max<int64_t>(partial_size, 1)}));
  const int64_t per_chunk = (tiles + chunks - 1) / std::max<int64_t>(chunks, 1);
  return {per_chunk > 0 ? (tiles + per_chunk - 1) / per_chunk : 1, std::max<int64_t>(per_chunk, 1)};
}

// out[e] = sum over chunks c, in order, of partial[c * size + e], rounded once to T.
template <typename Acc, typename T>
__global__ void sum_partials_kernel(const Acc* partial, int64_t chunks, int64_t size, T* out) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= size) return;
  Acc sum = partial[e];
  for (int64_t c = 1; c < chunks; ++c) sum += partial[c * size + e];
  out[e] = T(sum);
}

constexpr int kSumThreads = 256;

inline dim3 sum_grid(int64_t size) { return dim3(unsigned((size + kSumThreads - 1) / kSumThreads)); }

// SIMT kernel (float64, and GPUs before sm_80): block (32 output x 8 input channels), one weight
// element per thread, summed over the block's rows in Acc.
namespace simt {

constexpr int kColumns = 32, kChannels = 8;

inline dim3 grid(int64_t chunks, int64_t K, int64_t C_in, int64_t C_out) {
  return dim3(unsigned(chunks), unsigned(K),
              unsigned(((C_in + kChannels - 1) / kChannels) * ((C_out + kColumns - 1) / kColumns)));
}

inline dim3 block() { return dim3(kColumns, kChannels); }

// Grid (chunks, K, channel tiles). feats [N_in, C_in], grad_out [N_out, C_out], neighbors [N_out, K];
// order [splits, N_out] and masks [splits, tiles, words] of the forward's reordering; partial
// [chunks, K, C_in, C_out] in Acc, every entry written.
template <typename T, typename Acc>
__global__ void weight_grad_kernel(const T* feats, int64_t C_in, const T* grad_out, int64_t C_out,
                                   const int32_t* neighbors, int64_t K, const int32_t* order, const int32_t* masks,
                                   int64_t splits, int64_t words, int64_t n_out, int64_t tile_rows, int64_t tiles,
                                   int64_t tiles_per_chunk, Acc* partial) {
  const int64_t k = blockIdx.y, column_blocks = (C_out + kColumns - 1) / kColumns;
  const int64_t c = blockIdx.z / column_blocks * kChannels + threadIdx.y;
  const int64_t col = blockIdx.z % column_blocks * kColumns + threadIdx.x;
  if (c >= C_in || col >= C_out) return;
  const int64_t split = split_of(k, K, splits);
  const int32_t* split_order = order + split * n_out;
  const int64_t first = blockIdx.x * tiles_per_chunk;
  RowCursor rows{masks + split * tiles * words, words, tile_rows, n_out, min(first + tiles_per_chunk, tiles),
                 k / 32, 1u << (k % 32)};
  Acc sum = Acc(0);
  for (rows.seek(first); !rows.done(); rows.advance(tile_rows)) {
    for (int64_t r = 0; rows.position(r) >= 0; ++r) {
      const int32_t o = split_order[rows.position(r)];
      CUDA_KERNEL_ASSERT(row_in_range(o, n_out));
      const int32_t i = neighbors[int64_t(o) * K + k];
      if (i >= 0) sum += static_cast<Acc>(feats[int64_t(i) * C_in + c]) * static_cast<Acc>(grad_out[int64_t(o) * C_out + col]);
    }
  }
  partial[((blockIdx.x * K + k) * C_in + c) * C_out + col] = sum;
}

}  // namespace simt

// Tiled kernel (sm_80+): the forward's tiles (tiled::TensorCoreTile / FmaTile, 4 warps) with the
// roles turned: the block's kRows x kCols accumulators are (input channel, output channel) of
// grad_weight[k], the depth is the rows. Per stage, kSlab rows: their neighbours' input channels
// [c0, c0 + kRows) into A [kSlab, kRows] (stored depth-major, so the copies are whole row segments)
// and their output gradient's [col0, col0 + kCols) into B [kSlab, kCols], both zero where the row has
// no neighbour at k or lies past its tile, staged by cp.async into one buffer while the other is
// multiplied. Half / bfloat16 on tensor cores, float32 as TF32 when torch allows it, else FMA tiles.
namespace tiled {

using implicit_gemm::tiled::kRows;
using implicit_gemm::tiled::kThreadsPerBlock;
using implicit_gemm::tiled::padded;
using implicit_gemm::tiled::Wmma;
#if PS_TENSOR_CORE_ARCH
using implicit_gemm::tiled::FmaTile;
using implicit_gemm::tiled::TensorCoreTile;
#endif

constexpr int kSlab = 32;  // rows per stage: two MMA steps of half / bfloat16, four of TF32

inline int block_columns(int64_t C_out) { return implicit_gemm::tiled::block_columns(C_out); }

inline dim3 grid(int64_t chunks, int64_t K, int64_t C_in, int64_t C_out) {
  const int columns = block_columns(C_out);
  return dim3(unsigned(chunks), unsigned(K), unsigned(((C_in + kRows - 1) / kRows) * ((C_out + columns - 1) / columns)));
}

#if PS_TENSOR_CORE_ARCH
// This thread's share of copying kWidth channels [first, first + kWidth) of the rows src_row(r)
// (nullptr: a zero row) into dst [kSlab, kLd]; 16-byte copies where vectors (the row length a
// multiple of 16 bytes and the base 16-byte aligned), else element by element.
template <typename W, int kWidth, int kLd, typename SourceRow>
__device__ inline void stage_slab(W* dst, const W* base, int64_t length, int64_t first, bool vectors,
                                  const SourceRow& src_row, W zero) {
  using implicit_gemm::tiled::stage;
  if (vectors) {
    constexpr int kVector = 16 / sizeof(W), kPerRow = kWidth / kVector;
    for (int e = threadIdx.x; e < kSlab * kPerRow; e += kThreadsPerBlock) {
      const int r = e / kPerRow, j = e % kPerRow * kVector;
      const W* row = src_row(r);
      const bool valid = row != nullptr && first + j < length;
      cp_async16_zfill(dst + r * kLd + j, valid ? row + first + j : base, valid);
    }
  } else {
    for (int e = threadIdx.x; e < kSlab * kWidth; e += kThreadsPerBlock) {
      const int r = e / kWidth, j = e % kWidth;
      const W* row = src_row(r);
      const bool valid = row != nullptr && first + j < length;
      stage(dst + r * kLd + j, valid ? row + first + j : base, valid, zero);
    }
  }
}
#endif

// Grid (chunks, K, channel tiles) of kThreadsPerBlock threads; partial float [chunks, K, C_in,
// C_out]; the other arguments as for simt::weight_grad_kernel. kTensorCores false (float32 only):
// FP32 FMAs, exact.
template <typename T, int kCols, bool kTensorCores = true>
__global__ void weight_grad_kernel(const T* feats_, int64_t C_in, const T* grad_out_, int64_t C_out,
                                   const int32_t* neighbors, int64_t K, const int32_t* order, const int32_t* masks,
                                   int64_t splits, int64_t words, int64_t n_out, int64_t tile_rows, int64_t tiles,
                                   int64_t tiles_per_chunk, float* partial) {
#if PS_TENSOR_CORE_ARCH
  static_assert(kTensorCores || std::is_same_v<T, float>, "the FMA tiles are for float32");
  using Tile = std::conditional_t<kTensorCores, TensorCoreTile<T, kCols>, FmaTile<kCols>>;
  using W = typename Wmma<T>::type;
  constexpr int kVector = 16 / sizeof(W), kLdA = padded<W>(kRows), kLdB = padded<W>(kCols);
  const W* feats = reinterpret_cast<const W*>(feats_);
  const W* grad_out = reinterpret_cast<const W*>(grad_out_);
  const W zero = Wmma<T>::zero();
  alignas(32) __shared__ W a_s[2][kSlab * kLdA];
  alignas(32) __shared__ W b_s[2][kSlab * kLdB];
  alignas(32) __shared__ float c_s[kRows * kCols];
  const int64_t k = blockIdx.y, column_blocks = (C_out + kCols - 1) / kCols;
  const int64_t c0 = blockIdx.z / column_blocks * kRows, col0 = blockIdx.z % column_blocks * kCols;
  const int64_t split = split_of(k, K, splits);
  const int32_t* split_order = order + split * n_out;
  const int64_t first = blockIdx.x * tiles_per_chunk;
  const bool feats_vectors = C_in % kVector == 0 && implicit_gemm::tiled::aligned16(feats);
  const bool grad_vectors = C_out % kVector == 0 && implicit_gemm::tiled::aligned16(grad_out);
  // Per buffer, the slab's rows: the output row and its neighbour at k, both -1 where the row has none
  // or lies past its tile. Looked up once per row (not once per copy), before the copies are issued.
  __shared__ int32_t outs_s[2][kSlab], ins_s[2][kSlab];
  const auto stage_both = [&](const RowCursor& at, int buffer) {
    if (threadIdx.x < kSlab) {
      const int64_t p = at.position(threadIdx.x);
      const int32_t o = p >= 0 ? split_order[p] : -1;
      CUDA_KERNEL_ASSERT(o < 0 || row_in_range(o, n_out));
      const int32_t i = o >= 0 ? neighbors[int64_t(o) * K + k] : -1;
      outs_s[buffer][threadIdx.x] = i >= 0 ? o : -1;
      ins_s[buffer][threadIdx.x] = i;
    }
    __syncthreads();  // (this buffer's rows were last read two stages ago, barriers between)
    stage_slab<W, kRows, kLdA>(a_s[buffer], feats, C_in, c0, feats_vectors, [&](int r) -> const W* {
      const int32_t i = ins_s[buffer][r];
      return i >= 0 ? feats + int64_t(i) * C_in : nullptr;
    }, zero);
    stage_slab<W, kCols, kLdB>(b_s[buffer], grad_out, C_out, col0, grad_vectors, [&](int r) -> const W* {
      const int32_t o = outs_s[buffer][r];
      return o >= 0 ? grad_out + int64_t(o) * C_out : nullptr;
    }, zero);
  };
  Tile tile;
  tile.zero();
  RowCursor rows{masks + split * tiles * words, words, tile_rows, n_out, min(first + tiles_per_chunk, tiles),
                 k / 32, 1u << (k % 32)};
  rows.seek(first);
  if (!rows.done()) stage_both(rows, 0);
  cp_async_commit();
  for (int buffer = 0; !rows.done(); buffer ^= 1) {
    RowCursor next = rows;
    next.advance(kSlab);
    if (!next.done()) stage_both(next, buffer ^ 1);  // in flight while this slab multiplies
    cp_async_commit();
    cp_async_wait<1>();  // this slab's copies have landed
    __syncthreads();
    tile.template multiply<kLdA, kLdB, true>(a_s[buffer], b_s[buffer], kSlab);
    __syncthreads();  // before the next iteration stages into this buffer
    rows = next;
  }
  tile.store(c_s);
  __syncthreads();
  float* out = partial + (blockIdx.x * K + k) * C_in * C_out;
  for (int e = threadIdx.x; e < kRows * kCols; e += kThreadsPerBlock) {
    const int r = e / kCols, j = e % kCols;
    if (c0 + r < C_in && col0 + j < C_out) out[(c0 + r) * C_out + col0 + j] = c_s[e];
  }
#else
  CUDA_KERNEL_ASSERT(false && "the tiled weight gradient needs sm_80 or newer");
#endif
}

// The tiled kernel for T and C_out, as implicit_gemm::tiled::kernel_for.
template <typename T>
decltype(&weight_grad_kernel<T, 32>) kernel_for(int64_t C_out, bool tensor_cores) {
  const bool wide = block_columns(C_out) == 64;
  if constexpr (std::is_same_v<T, float>) {
    if (!tensor_cores) return wide ? &weight_grad_kernel<float, 64, false> : &weight_grad_kernel<float, 32, false>;
  }
  return wide ? &weight_grad_kernel<T, 64> : &weight_grad_kernel<T, 32>;
}

}  // namespace tiled
}  // namespace weight_grad
}  // namespace implicit_gemm
}  // namespace pointsparse
