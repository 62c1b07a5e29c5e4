// Host twins of the CUDA element types and nvcuda::wmma, for the emulated kernels (cuda_threads.h).
// A fragment holds its whole matrix in every thread of the warp (the device spreads it over the
// lanes, but what a kernel may do with fragments, element-wise updates included, gives the same
// result); stores are made by lane 0. The documented preconditions are
// checked: 256-bit aligned pointers, ldm a multiple of 16 bytes, the MMA shapes of each type, TF32
// inputs rounded by __float_to_tf32.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_threads.h"

namespace emulation {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16, as torch.half stores it.
struct Half {
  uint16_t bits;
  Half() = default;
  Half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&bits, &h, 2);
  }
  operator float() const {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
};

// bfloat16, as torch.bfloat16 stores it: the top half of a float32, rounded to nearest even.
struct BFloat16 {
  uint16_t bits;
  BFloat16() = default;
  BFloat16(float f) {
    const uint32_t u = bits_of(f);
    bits = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  operator float() const { return float_of(uint32_t(bits) << 16); }
};

}  // namespace emulation

namespace c10 {
using Half = emulation::Half;
using BFloat16 = emulation::BFloat16;
}  // namespace c10

using __half = emulation::Half;
using __nv_bfloat16 = emulation::BFloat16;
inline __half __float2half(float f) { return __half(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }

#define PS_TENSOR_CORE_ARCH 1

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

// cvt.rna.tf32.f32: to 10 mantissa bits, nearest, ties away from zero.
inline float __float_to_tf32(float f) { return emulation::float_of((emulation::bits_of(f) + 0x1000u) & ~0x1fffu); }

template <typename Use, int M, int N, int K>
struct extent;
template <int M, int N, int K>
struct extent<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct extent<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct extent<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(std::is_same_v<Use, accumulator> ? (std::is_same_v<T, float> && std::is_void_v<Layout>)
                                                 : !std::is_void_v<Layout>,
                "accumulators are float without a layout; A and B fragments need one");
  static constexpr bool tf32_shape = M == 16 && N == 16 && K == 8;
  static constexpr bool half_shape = K == 16 && M * N == 256 && (M == 8 || M == 16 || M == 32);
  static_assert(std::is_same_v<T, precision::tf32> ? tf32_shape
                : std::is_same_v<Use, accumulator> ? tf32_shape || half_shape
                                                   : half_shape,
                "not a WMMA shape of this element type");
  using element_type = typename storage<T>::type;
  static constexpr int rows = extent<Use, M, N, K>::rows, cols = extent<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];
};

inline void check_pointer(const void* p, unsigned ldm, size_t element_size) {
  CUDA_KERNEL_ASSERT(reinterpret_cast<uintptr_t>(p) % 32 == 0 && "WMMA pointers must be 256-bit aligned");
  CUDA_KERNEL_ASSERT(ldm * element_size % 16 == 0 && "WMMA ldm must be a multiple of 16 bytes");
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using Fragment = fragment<Use, M, N, K, T, Layout>;
  static_assert(std::is_same_v<P, typename Fragment::element_type>, "pointer type differs from the fragment's");
  check_pointer(p, ldm, sizeof(P));
  for (int r = 0; r < Fragment::rows; ++r)
    for (int c = 0; c < Fragment::cols; ++c)
      f.x[r * Fragment::cols + c] = std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_pointer(p, ldm, sizeof(float));
  if (emulation::lane() != 0) return;  // one store per warp
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}

// TF32 fragments hold floats that __float_to_tf32 has rounded (the programming guide asks for it).
template <typename Use, int M, int N, int K, typename T, typename Layout>
void check_tf32(const fragment<Use, M, N, K, T, Layout>& f) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    for (float v : f.x) CUDA_KERNEL_ASSERT((emulation::bits_of(v) & 0x1fffu) == 0 && "TF32 input not rounded");
  }
}

// d = a b + c in float.
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  check_tf32(a);
  check_tf32(b);
  float a_f[M * K], b_f[K * N], sum[M * N];  // converted once: every thread of the warp computes all
  for (int q = 0; q < M * K; ++q) a_f[q] = float(a.x[q]);
  for (int q = 0; q < K * N; ++q) b_f[q] = float(b.x[q]);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += a_f[i * K + k] * b_f[k * N + j];
      sum[i * N + j] = s;
    }
  std::memcpy(d.x, sum, sizeof(sum));
}

}  // namespace wmma
}  // namespace nvcuda
