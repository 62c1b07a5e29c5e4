// The implicit-GEMM kernels: output-stationary tiles of reordered output rows, one split per launch.
//
// Written against the CUDA names only (threadIdx, __syncthreads, __shared__, nvcuda::wmma, __half,
// CUDA_KERNEL_ASSERT, cp_async4_zfill): conv_cuda.cu includes it after the real ones, and
// tests/emulation/ after host twins that run every thread of a block as a CPU thread, so the same
// kernel code is tested on machines without a GPU. Raw pointers only; no ATen here.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../conv_element.h"

// Tensor cores (WMMA with float accumulators, TF32 and bfloat16 included) need sm_80 or newer; the
// emulation defines the macro itself.
#ifndef PS_TENSOR_CORE_ARCH
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PS_TENSOR_CORE_ARCH 1
#else
#define PS_TENSOR_CORE_ARCH 0
#endif
#endif

namespace pointsparse {
namespace implicit_gemm {

// The splits run in order, one launch each, the first assigning and the others adding:
// launch(order, masks, assign, last) with split s's order [N_out] and tile masks [tiles, words]; the
// last split writes the output (the tiled kernels round the float sums to the output's type there).
template <typename Launch>
void for_each_split(const int32_t* order, const int32_t* masks, int64_t splits, int64_t n_out, int64_t tiles,
                    int64_t words, const Launch& launch) {
  for (int64_t s = 0; s < splits; ++s) launch(order + s * n_out, masks + s * tiles * words, s == 0, s == splits - 1);
}

// SIMT kernel: block (tile t, 32 output columns), its 8 thread rows walk the tile's rows, one
// output element per thread through the shared implicit_dot_element.
namespace simt {

constexpr int kChannelThreads = 32;  // threads along the output columns
constexpr int kRowsPerBlock = 8;     // thread rows per block

inline dim3 grid(int64_t tiles, int64_t C_out) {
  return dim3(unsigned(tiles), unsigned((C_out + kChannelThreads - 1) / kChannelThreads));
}

inline dim3 block() { return dim3(kChannelThreads, kRowsPerBlock); }

// weight [K, C_in, C_out] contiguous; acc [N_out, C_out] in Acc, assigned by the first split, added
// to by the others; order [N_out] and masks [tiles, words] of this split.
template <typename T, typename Acc>
__global__ void implicit_kernel(const T* feats, int64_t C_in, const int32_t* neighbors, int64_t K,
                                const int32_t* order, const int32_t* masks, int64_t words, int64_t n_out,
                                int64_t tile_rows, const T* weight, int64_t C_out, bool assign, Acc* acc) {
  const int64_t t = blockIdx.x, col = blockIdx.y * int64_t(kChannelThreads) + threadIdx.x;
  if (col >= C_out) return;
  const int32_t* mask = masks + t * words;
  const int64_t begin = t * tile_rows, rows = min(tile_rows, n_out - begin);
  for (int64_t r = threadIdx.y; r < rows; r += kRowsPerBlock) {
    const int32_t o = order[begin + r];
    CUDA_KERNEL_ASSERT(row_in_range(o, n_out));
    const int32_t* nb_row = neighbors + int64_t(o) * K;
    const Acc sum = implicit_dot_element<T, Acc>(feats, C_in, nb_row, mask, words, K, weight, C_out, col);
    Acc* dst = acc + int64_t(o) * C_out + col;
    *dst = assign ? sum : *dst + sum;
  }
}

}  // namespace simt

// Tiled kernel (sm_80+): a block of 4 warps takes 32 rows of one reorder tile x kCols (32 or 64)
// output columns, with float accumulators held across every offset of the tile's mask: on tensor
// cores (WMMA) for half / bfloat16, and for float32 as TF32 when torch allows it, each warp 16 rows
// x kCols / 2 columns in 16 x 16 fragments; or on the FP32 pipes for exact float32, each thread
// 4 rows x kCols / 16 columns. The work of a tile is a sequence of stages, one per (offset in the
// mask, slab of kSlab input channels), or for narrow inputs one per group of offsets whose channels
// fill a slab together (StageCursor): the tile's neighbour rows (zero where absent or past the
// stage's channels) and the weight block, staged in shared memory by cp.async into one of two
// buffers while the block multiplies the other (half / bfloat16 rows whose channel count is not a
// multiple of 8 go through registers instead). Any channel count: partial slabs are zero-padded when
// staged and masked when stored.
namespace tiled {

constexpr int kRows = 32, kThreadsPerBlock = 128;
constexpr int kThreadsPerRow = kThreadsPerBlock / kRows;  // threads staging one neighbour row
constexpr int kSteps = 4;                                  // MMA k-steps per stage

// Row strides in shared memory, padded by 16 bytes: unpadded, the rows a fragment load reads (128 or
// 64 bytes apart) fall in the same banks; padded they are spread, and every fragment pointer stays
// 256-bit aligned and every 16-byte copy 16-byte aligned (checked by the emulation).
template <typename W>
constexpr int padded(int elements) {
  return elements + 16 / int(sizeof(W));
}

// Per element type: what shared memory holds, what the fragments take, and the k of the MMA shape.
template <typename T>
struct Wmma;
template <>
struct Wmma<c10::Half> {
  using type = __half;
  using fragment = __half;
  static constexpr int kDepth = 16;
  static __device__ type zero() { return __float2half(0.f); }
};
template <>
struct Wmma<c10::BFloat16> {
  using type = __nv_bfloat16;
  using fragment = __nv_bfloat16;
  static constexpr int kDepth = 16;
  static __device__ type zero() { return __float2bfloat16(0.f); }
};
template <>
struct Wmma<float> {
  using type = float;
  using fragment = nvcuda::wmma::precision::tf32;
  static constexpr int kDepth = 8;
  static __device__ type zero() { return 0.f; }
};

// Offsets a stage packs side by side when the input is narrow (see StageCursor): 16 of a 4-channel
// stem fill a half / bfloat16 slab.
constexpr int kMaxPack = 16;

// Offsets per stage for C_in input channels and slabs of `slab`: several once two fit in a slab
// (one for no channels at all: nothing to stage).
PS_HD int64_t offsets_per_stage(int64_t C_in, int64_t slab) {
  if (C_in <= 0 || 2 * C_in > slab) return 1;
  return slab / C_in < kMaxPack ? slab / C_in : kMaxPack;
}

#if PS_TENSOR_CORE_ARCH
// The stages of one tile in order, the same in every thread of a block; k < 0 once all are done.
// Wide inputs (pack 1): each offset set in the tile's mask, ascending, and per offset its input
// channels c0, c0 + slab, ... < C_in. Narrow inputs (pack > 1, C_in <= slab / 2): up to `pack` offsets
// of one mask word per stage with all their channels side by side, position p of the stage being
// channel p % C_in of its offset p / C_in, so that a 4-channel stem fills the MMA depth with 16
// offsets instead of zero-padding one offset to it (and 32 half channels take two offsets a stage).
struct StageCursor {
  const int32_t* mask;
  int64_t words, K, C_in, slab, pack;
  int64_t w = -1, k = -1, c0 = 0;
  int n = 0;                          // offsets in this stage, the first being k
  uint32_t bits = 0, stage_bits = 0;  // word w's bits after this stage; from this stage's first on

  __device__ void next_offsets() {
    while (bits == 0 && ++w < words) bits = uint32_t(mask[w]);
    stage_bits = bits;
    n = 0;
    c0 = 0;
    // bits past K: none in a well-formed mask; they end the tile
    while (bits != 0 && n < pack && 32 * w + lowest_bit(bits) < K) {
      bits &= bits - 1;
      ++n;
    }
    if (n == 0) bits = 0, w = words;
    k = n == 0 ? -1 : 32 * w + lowest_bit(stage_bits);
  }

  __device__ void advance() {
    c0 += slab;
    if (pack > 1 || c0 >= C_in) next_offsets();
  }

  // Where position p (< slab) of the stage reads: which of its offsets (n or more: past them) and
  // which input channel. Asked per staged element, so int math, and none for wide inputs.
  __device__ int offset_index(int p) const { return pack > 1 ? p / int(C_in) : 0; }
  __device__ int64_t channel_at(int p) const { return pack > 1 ? p % int(C_in) : c0 + p; }
  // The stage's j-th offset (j < n), and the offset at position p (-1: past the stage's offsets).
  __device__ int64_t offset(int j) const { return j == 0 ? k : 32 * w + nth_bit(stage_bits, j); }
  __device__ int64_t offset_at(int p) const {
    const int j = offset_index(p);
    return j < n ? offset(j) : -1;
  }
  // Positions that hold data.
  __device__ int64_t depth() const { return pack > 1 ? n * C_in : min(slab, C_in - c0); }
};

template <typename W>
__device__ inline bool aligned16(const W* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// dst = valid ? *src : 0 for one element in shared memory: float32 through cp.async (zero filled in
// flight), 2-byte types by a plain load.
template <typename W>
__device__ inline void stage(W* dst, const W* src, bool valid, W zero) {
  if constexpr (sizeof(W) == 4) {
    cp_async4_zfill(dst, src, valid);
  } else {
    *dst = valid ? *src : zero;
  }
}

// This thread's part of A [kRows, kSlab] (rows padded(kSlab) apart) for stage `at`: positions
// part * kSlab / kThreadsPerRow on, of the output row whose neighbours are nb_row (null: none), into
// row r; zero where the neighbour is absent or past the stage's channels. vectors: 16-byte copies
// (C_in a multiple of 16 bytes and feats 16-byte aligned, so a vector is wholly inside or past one
// offset's channels).
template <typename W, int kSlab>
__device__ inline void stage_rows(W* a, const W* feats, int64_t C_in, const int32_t* nb_row, const StageCursor& at,
                                  int r, int part, bool vectors, W zero) {
  constexpr int kPart = kSlab / kThreadsPerRow, kVector = 16 / sizeof(W);
  static_assert(kPart % kVector == 0, "a thread's part of a row is whole vectors");
  W* dst = a + r * padded<W>(kSlab) + part * kPart;
  const int first = part * kPart;
  int looked_up = -1;  // the offset index whose neighbour i holds: a part spans few offsets
  int32_t i = -1;
  const auto source = [&](int p, bool& valid) {
    const int j = at.offset_index(p);
    if (j != looked_up) {
      looked_up = j;
      i = nb_row != nullptr && j < at.n ? nb_row[at.offset(j)] : -1;
    }
    const int64_t c = at.channel_at(p);
    valid = i >= 0 && c < C_in;
    return valid ? feats + int64_t(i) * C_in + c : feats;
  };
  bool valid;
  if (vectors) {
    for (int e = 0; e < kPart; e += kVector) {
      const W* src = source(first + e, valid);
      cp_async16_zfill(dst + e, src, valid);
    }
  } else {
    for (int e = 0; e < kPart; ++e) {
      const W* src = source(first + e, valid);
      stage(dst + e, src, valid, zero);
    }
  }
}

// B [kSlab, kCols] (rows padded(kCols) apart) for stage `at`: row p is weight[offset, c, col0 + j] of
// the offset and channel at position p, zero past the stage's channels or C_out; the block's threads
// share it. vectors: 16-byte copies (C_out a multiple of 16 bytes and weight 16-byte aligned).
// transposed: the weight is stored [K, C_out, C_in] (the input gradient's weight.transpose(1, 2),
// read in place), staged element by element with the threads along p, contiguous there within an
// offset.
template <typename W, int kSlab, int kCols>
__device__ inline void stage_weight(W* b, const W* weight, int64_t C_in, int64_t C_out, const StageCursor& at,
                                    int64_t col0, bool vectors, bool transposed, W zero) {
  // weight[offset, c] of position p (its row of C_out, or with transposed its column of stride C_in)
  const auto source = [&](int p, int64_t col, bool& valid) {
    const int64_t k = at.offset_at(p), c = at.channel_at(p);
    valid = k >= 0 && c < C_in && col < C_out;
    if (!valid) return weight;
    return weight + k * C_in * C_out + (transposed ? col * C_in + c : c * C_out + col);
  };
  bool valid;
  if (transposed) {
    for (int e = threadIdx.x; e < kSlab * kCols; e += kThreadsPerBlock) {
      const int j = e / kSlab, p = e % kSlab;
      const W* src = source(p, col0 + j, valid);
      stage(b + p * padded<W>(kCols) + j, src, valid, zero);
    }
  } else if (vectors) {
    constexpr int kVector = 16 / sizeof(W), kPerRow = kCols / kVector;
    for (int e = threadIdx.x; e < kSlab * kPerRow; e += kThreadsPerBlock) {
      const int p = e / kPerRow, j = e % kPerRow * kVector;
      const W* src = source(p, col0 + j, valid);
      cp_async16_zfill(b + p * padded<W>(kCols) + j, src, valid);
    }
  } else {
    for (int e = threadIdx.x; e < kSlab * kCols; e += kThreadsPerBlock) {
      const int p = e / kCols, j = e % kCols;
      const W* src = source(p, col0 + j, valid);
      stage(b + p * padded<W>(kCols) + j, src, valid, zero);
    }
  }
}
#endif

// What the last split applies to a finished float sum before rounding it to the output's type: an
// eval-mode batch norm (scale, shift [C_out] float), a residual [N_out, C_out] in T and a ReLU,
// relu?(sum * scale + shift + residual), as the CPU's fused epilogue. Null pointers skip a part; the
// default is none at all.
template <typename T>
struct Epilogue {
  const float* scale = nullptr;
  const float* shift = nullptr;
  const T* residual = nullptr;
  bool relu = false;

  // v for output row o (at = o * C_out + col) and column col.
  __device__ float apply(float v, int64_t at, int64_t col) const {
    if (scale != nullptr) v = v * scale[col] + shift[col];
    if (residual != nullptr) v += static_cast<float>(residual[at]);
    return relu && v < 0.f ? 0.f : v;
  }
};

// Output columns per block: 64 once C_out needs more than one block of 32, so that a tile's rows
// are gathered half as often and each warp's A fragment feeds two MMAs.
inline int block_columns(int64_t C_out) { return C_out > 32 ? 64 : 32; }

#if PS_TENSOR_CORE_ARCH
// The block's kRows x kCols accumulators on tensor cores: each warp 16 rows x kCols / 2 columns in
// 16 x 16 fragments (float32 inputs rounded to TF32).
template <typename T, int kCols>
struct TensorCoreTile {
  using W = typename Wmma<T>::type;
  using F = typename Wmma<T>::fragment;
  static constexpr int kDepth = Wmma<T>::kDepth, kFragments = kCols / 32;  // per warp
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kDepth, float> c[kFragments];

  __device__ void zero() {
    for (int f = 0; f < kFragments; ++f) nvcuda::wmma::fill_fragment(c[f], 0.f);
  }

  // c += A[:, :depth] B[:depth, :], A [kRows, kLdA] and B [kSlab, kLdB] in shared memory, depth
  // rounded up to kDepth (the staged slab is zero past C_in). kDepthMajorA: A is stored transposed,
  // [depth, kLdA] (the weight gradient's gathered input rows), and loaded column-major.
  template <int kLdA, int kLdB, bool kDepthMajorA = false>
  __device__ void multiply(const W* a, const W* b, int64_t depth) {
    using namespace nvcuda;
    using LayoutA = std::conditional_t<kDepthMajorA, wmma::col_major, wmma::row_major>;
    const int warp = threadIdx.x / 32, warp_row = warp / 2, warp_col = warp % 2;
    for (int64_t s = 0; s * kDepth < depth; ++s) {
      wmma::fragment<wmma::matrix_a, 16, 16, kDepth, F, LayoutA> a_frag;
      wmma::fragment<wmma::matrix_b, 16, 16, kDepth, F, wmma::row_major> b_frag;
      const W* a_step = kDepthMajorA ? a + s * kDepth * kLdA + warp_row * 16 : a + warp_row * 16 * kLdA + s * kDepth;
      wmma::load_matrix_sync(a_frag, a_step, kLdA);
      if constexpr (sizeof(W) == 4) {  // float32 in, rounded to TF32 for the MMA
        for (int q = 0; q < a_frag.num_elements; ++q) a_frag.x[q] = wmma::__float_to_tf32(a_frag.x[q]);
      }
      for (int f = 0; f < kFragments; ++f) {
        wmma::load_matrix_sync(b_frag, b + s * kDepth * kLdB + (warp_col * kFragments + f) * 16, kLdB);
        if constexpr (sizeof(W) == 4) {
          for (int q = 0; q < b_frag.num_elements; ++q) b_frag.x[q] = wmma::__float_to_tf32(b_frag.x[q]);
        }
        wmma::mma_sync(c[f], a_frag, b_frag, c[f]);
      }
    }
  }

  // c_s [kRows, kCols] float.
  __device__ void store(float* c_s) {
    const int warp = threadIdx.x / 32, warp_row = warp / 2, warp_col = warp % 2;
    for (int f = 0; f < kFragments; ++f) {
      nvcuda::wmma::store_matrix_sync(c_s + warp_row * 16 * kCols + (warp_col * kFragments + f) * 16, c[f], kCols,
                                      nvcuda::wmma::mem_row_major);
    }
  }
};

// The same accumulators on the FP32 pipes, for exact float32: each thread 4 rows x kCols / 16
// columns in registers (16 threads across the columns, 8 down the rows).
template <int kCols>
struct FmaTile {
  using W = float;
  static constexpr int kRowsPerThread = kRows / (kThreadsPerBlock / 16), kColsPerThread = kCols / 16;
  float c[kRowsPerThread][kColsPerThread];

  __device__ void zero() {
    for (int i = 0; i < kRowsPerThread; ++i)
      for (int j = 0; j < kColsPerThread; ++j) c[i][j] = 0.f;
  }

  template <int kLdA, int kLdB, bool kDepthMajorA = false>
  __device__ void multiply(const float* a, const float* b, int64_t depth) {
    const int row0 = threadIdx.x / 16 * kRowsPerThread;
    const float* b_cols = b + threadIdx.x % 16 * kColsPerThread;
    for (int64_t k = 0; k < depth; ++k) {
      float a_k[kRowsPerThread], b_k[kColsPerThread];
      for (int i = 0; i < kRowsPerThread; ++i) a_k[i] = kDepthMajorA ? a[k * kLdA + row0 + i] : a[(row0 + i) * kLdA + k];
      for (int j = 0; j < kColsPerThread; ++j) b_k[j] = b_cols[k * kLdB + j];
      for (int i = 0; i < kRowsPerThread; ++i)
        for (int j = 0; j < kColsPerThread; ++j) c[i][j] += a_k[i] * b_k[j];
    }
  }

  __device__ void store(float* c_s) {
    const int row0 = threadIdx.x / 16 * kRowsPerThread, col0 = threadIdx.x % 16 * kColsPerThread;
    for (int i = 0; i < kRowsPerThread; ++i)
      for (int j = 0; j < kColsPerThread; ++j) c_s[(row0 + i) * kCols + col0 + j] = c[i][j];
  }
};
#endif

// Grid (tiles, ceil(C_out / kCols)) of kThreadsPerBlock threads; the other arguments as for
// simt::implicit_kernel, but the sums go to acc float [N_out, C_out] (assigned by the first split,
// added to by the others) and the last split writes acc + its sum, rounded once, to out [N_out, C_out]
// in T, through the epilogue: a single split needs no acc (nullptr), and for float32 acc may be out.
// weight_transposed: weight_ is stored [K, C_out, C_in] (see stage_weight). kTensorCores false
// (float32 only): FP32 FMAs, exact.
template <typename T, int kCols, bool kTensorCores = true>
__global__ void implicit_kernel(const T* feats_, int64_t C_in, const int32_t* neighbors, int64_t K,
                                const int32_t* order, const int32_t* masks, int64_t words, int64_t n_out,
                                int64_t tile_rows, const T* weight_, int64_t C_out, bool assign, bool last,
                                float* acc, T* out, bool weight_transposed, Epilogue<T> epilogue) {
#if PS_TENSOR_CORE_ARCH
  static_assert(kTensorCores || std::is_same_v<T, float>, "the FMA tiles are for float32");
  using Tile = std::conditional_t<kTensorCores, TensorCoreTile<T, kCols>, FmaTile<kCols>>;
  using W = typename Wmma<T>::type;
  constexpr int kSlab = kSteps * Wmma<T>::kDepth, kVector = 16 / sizeof(W);
  constexpr int kLdA = padded<W>(kSlab), kLdB = padded<W>(kCols);
  const W* feats = reinterpret_cast<const W*>(feats_);
  const W* weight = reinterpret_cast<const W*>(weight_);
  const W zero = Wmma<T>::zero();
  // Two buffers of each operand; WMMA loads and stores need 256-bit aligned pointers.
  alignas(32) __shared__ W a_s[2][kRows * kLdA];
  alignas(32) __shared__ W b_s[2][kSlab * kLdB];
  alignas(32) __shared__ float c_s[kRows * kCols];
  __shared__ int32_t rows_s[kRows];
  const int64_t t = blockIdx.x, col0 = int64_t(blockIdx.y) * kCols;
  const int row = threadIdx.x / kThreadsPerRow, part = threadIdx.x % kThreadsPerRow;  // what it stages of A
  const bool row_vectors = C_in % kVector == 0 && aligned16(feats);
  const bool weight_vectors = C_out % kVector == 0 && aligned16(weight);
  const int64_t tile_begin = t * tile_rows, tile_end = min(tile_begin + tile_rows, n_out);
  for (int64_t chunk = tile_begin; chunk < tile_end; chunk += kRows) {
    if (threadIdx.x < kRows) {
      const int32_t o = chunk + threadIdx.x < tile_end ? order[chunk + threadIdx.x] : -1;
      CUDA_KERNEL_ASSERT(o < 0 || row_in_range(o, n_out));
      rows_s[threadIdx.x] = o;
    }
    __syncthreads();
    const int32_t o = rows_s[row];
    const int32_t* nb_row = o >= 0 ? neighbors + int64_t(o) * K : nullptr;
    const auto stage_both = [&](const StageCursor& at, int buffer) {
      stage_rows<W, kSlab>(a_s[buffer], feats, C_in, nb_row, at, row, part, row_vectors, zero);
      stage_weight<W, kSlab, kCols>(b_s[buffer], weight, C_in, C_out, at, col0, weight_vectors, weight_transposed,
                                    zero);
    };
    Tile tile;
    tile.zero();
    StageCursor stage{masks + t * words, words, K, C_in, kSlab, offsets_per_stage(C_in, kSlab)};
    stage.next_offsets();
    if (stage.k >= 0) stage_both(stage, 0);
    cp_async_commit();
    for (int buffer = 0; stage.k >= 0; buffer ^= 1) {
      StageCursor next = stage;
      next.advance();
      if (next.k >= 0) stage_both(next, buffer ^ 1);  // in flight while this stage multiplies
      cp_async_commit();
      cp_async_wait<1>();  // this stage's copies have landed
      __syncthreads();
      tile.template multiply<kLdA, kLdB>(a_s[buffer], b_s[buffer], stage.depth());
      __syncthreads();  // before the next iteration stages into this buffer
      stage = next;
    }
    tile.store(c_s);
    __syncthreads();
    for (int e = threadIdx.x; e < kRows * kCols; e += kThreadsPerBlock) {
      const int r = e / kCols, j = e % kCols;
      const int32_t o = rows_s[r];
      if (o < 0 || col0 + j >= C_out) continue;
      const int64_t at = int64_t(o) * C_out + col0 + j;
      const float sum = assign ? c_s[e] : acc[at] + c_s[e];
      if (last) {
        out[at] = T(epilogue.apply(sum, at, col0 + j));
      } else {
        acc[at] = sum;
      }
    }
    __syncthreads();
  }
#else
  CUDA_KERNEL_ASSERT(false && "the tiled implicit GEMM needs sm_80 or newer");
#endif
}

// The tiled kernel for T and C_out: block_columns(C_out) columns per block, on tensor cores or, for
// float32 without them, on FMA tiles (tensor_cores false means nothing for the 16-bit types).
template <typename T>
decltype(&implicit_kernel<T, 32>) kernel_for(int64_t C_out, bool tensor_cores) {
  const bool wide = block_columns(C_out) == 64;
  if constexpr (std::is_same_v<T, float>) {
    if (!tensor_cores) return wide ? &implicit_kernel<float, 64, false> : &implicit_kernel<float, 32, false>;
  }
  return wide ? &implicit_kernel<T, 64> : &implicit_kernel<T, 32>;
}

inline dim3 grid(int64_t tiles, int64_t C_out) {
  const int columns = block_columns(C_out);
  return dim3(unsigned(tiles), unsigned((C_out + columns - 1) / columns));
}

}  // namespace tiled
}  // namespace implicit_gemm
}  // namespace pointsparse
