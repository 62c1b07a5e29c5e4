// Host twin of the CUDA execution model, for running kernel code on a CPU in tests: every thread of
// a block is a std::thread, __syncthreads() a barrier of the block, __shared__ a static (blocks run
// one after another), CUDA_KERNEL_ASSERT an exception the launch reports. As on the device, a failed
// assertion stops the kernel: the other threads of its block leave at their next barrier (reading
// no further than the device would) and no later block runs. Enough for kernels that use blockIdx /
// threadIdx / blockDim, block barriers and shared memory; warp shuffles and atomics are not emulated.
#pragma once

#include <atomic>
#include <barrier>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emulation {

inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local const std::atomic<bool>* block_stopped = nullptr;

struct KernelAssertion : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BlockStopped {};  // thrown at a barrier once another thread of the block has failed

// The thread's index within its warp (threads are numbered x fastest, as on the device).
inline unsigned lane() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32; }

// Runs kernel<<<grid, block>>>(args...) to completion; returns the first failed assertion, or "".
template <typename... Params, typename... Args>
std::string launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args... args) {
  const unsigned threads = block.x * block.y * block.z;
  std::string failure;
  std::mutex failure_mutex;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(threads);
        std::atomic<bool> stopped{false};
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            blockIdx = dim3(bx, by, bz);
            blockDim = block;
            gridDim = grid;
            block_barrier = &barrier;
            block_stopped = &stopped;
            try {
              kernel(static_cast<Params>(args)...);
            } catch (const KernelAssertion& e) {
              stopped = true;
              const std::lock_guard<std::mutex> lock(failure_mutex);
              if (failure.empty()) failure = e.what();
            } catch (const BlockStopped&) {
            }
            barrier.arrive_and_drop();  // a thread that has returned no longer holds the block back
          });
        }
        for (std::thread& thread : pool) thread.join();
        if (!failure.empty()) return failure;
      }
  return failure;
}

}  // namespace emulation

inline void __syncthreads() {
  emulation::block_barrier->arrive_and_wait();
  if (*emulation::block_stopped) throw emulation::BlockStopped{};
}

#define CUDA_KERNEL_ASSERT(cond)                                                                  \
  do {                                                                                            \
    if (!(cond)) throw emulation::KernelAssertion(std::string(__FILE__ ":") + std::to_string(__LINE__) + \
                                                  ": CUDA_KERNEL_ASSERT(" #cond ") failed");      \
  } while (0)

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
