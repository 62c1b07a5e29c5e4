// Marks per-element helpers that compile for both the CPU loops and the CUDA kernels.
#pragma once

#ifdef __CUDACC__
#define PS_HD __host__ __device__ __forceinline__
#else
#define PS_HD inline
#endif

#include <cstdint>

// Index of the lowest set bit of a non-zero word.
PS_HD int lowest_bit(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __ffs(int(bits)) - 1;
#else
  return __builtin_ctz(bits);
#endif
}

// Index of the n-th lowest set bit (n = 0: the lowest) of a word with more than n bits set.
PS_HD int nth_bit(uint32_t bits, int n) {
  for (; n > 0; --n) bits &= bits - 1;
  return lowest_bit(bits);
}
