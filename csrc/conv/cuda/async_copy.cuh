// cp.async (sm_80+): global-to-shared copies that bypass registers, so a block can stage its next
// tile while it multiplies the current one. Copies form groups (commit); cp_async_wait<N> waits
// until at most the N newest groups are in flight, and a __syncthreads() then publishes the data
// to the block. tests/emulation/async_copy.h holds host twins that defer each copy to its wait.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// *dst = valid ? *src : 0 for 4 bytes (16 for cp_async16_zfill, both addresses 16-byte aligned),
// dst in shared memory: a source size of 0 zero-fills, so an absent neighbour costs no branch. src
// must be a valid address either way.
__device__ inline void cp_async4_zfill(void* dst, const void* src, bool valid) {
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 4 : 0));
}

__device__ inline void cp_async16_zfill(void* dst, const void* src, bool valid) {
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 16 : 0));
}

// Closes the group of this thread's copies issued since the last commit (an empty group is fine).
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif
