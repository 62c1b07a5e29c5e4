// Marks per-element helpers that compile for both the CPU loops and the CUDA kernels.
#pragma once

#ifdef __CUDACC__
#define PS_HD __host__ __device__ __forceinline__
#else
#define PS_HD inline
#endif
