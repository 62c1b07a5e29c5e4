// Host twins of csrc/conv/cuda/async_copy.cuh. A copy is recorded when issued and carried out only
// when a wait retires its group, so a kernel that reads staged data before waiting for it reads
// stale shared memory here too (on the device it may or may not, depending on timing). Addresses
// are checked for the copy size's alignment.
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "cuda_threads.h"

namespace emulation {

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};

inline thread_local std::vector<AsyncCopy> uncommitted;
inline thread_local std::deque<std::vector<AsyncCopy>> in_flight;

inline void async_copy(void* dst, const void* src, int bytes, bool valid) {
  CUDA_KERNEL_ASSERT(reinterpret_cast<uintptr_t>(dst) % bytes == 0 && "cp.async destination misaligned");
  CUDA_KERNEL_ASSERT(reinterpret_cast<uintptr_t>(src) % bytes == 0 && "cp.async source misaligned");
  uncommitted.push_back({dst, src, bytes, valid});
}

}  // namespace emulation

inline void cp_async4_zfill(void* dst, const void* src, bool valid) { emulation::async_copy(dst, src, 4, valid); }
inline void cp_async16_zfill(void* dst, const void* src, bool valid) { emulation::async_copy(dst, src, 16, valid); }

inline void cp_async_commit() {
  emulation::in_flight.push_back(std::move(emulation::uncommitted));
  emulation::uncommitted.clear();
}

template <int N>
inline void cp_async_wait() {
  while (emulation::in_flight.size() > size_t(N)) {
    for (const emulation::AsyncCopy& c : emulation::in_flight.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, size_t(c.bytes));
      } else {
        std::memset(c.dst, 0, size_t(c.bytes));
      }
    }
    emulation::in_flight.pop_front();
  }
}
