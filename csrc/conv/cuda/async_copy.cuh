// cp.async (sm_80+): global-to-shared copies that do not pass through registers, for the
// implicit-GEMM kernels. tests/emulation/ holds host twins of these two functions.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// *dst = valid ? *src : 0 for 4 bytes, dst in shared memory: a source size of 0 zero-fills, so an
// absent neighbour costs no branch. src must be a valid address either way.
__device__ inline void cp_async4_zfill(void* dst, const void* src, bool valid) {
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 4 : 0));
}

// Waits for every cp.async this thread issued; a __syncthreads() then publishes them to the block.
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }
#endif
