// Tasks of uneven cost over the ATen thread pool, handed out one at a time to whichever thread is
// free: the threads finish together where a static split of the range leaves one waiting.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace pointsparse {

// Runs fn(t) for every task t in [0, count), each start to end on one thread (so a result that
// depends only on each task's own work does not depend on the schedule).
template <typename Fn>
void for_each_task(int64_t count, const Fn& fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), count), 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < count; t = next++) fn(t);
  });
}

}  // namespace pointsparse
