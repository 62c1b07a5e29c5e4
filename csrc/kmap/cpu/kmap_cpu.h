// Helpers shared by the CPU kernel-map files.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>

namespace pointsparse {

// Whether predicate(i) holds for some i in [0, n); every i is evaluated (the predicates also do
// the work), in parallel.
template <typename Predicate>
bool any_row(int64_t n, const Predicate& predicate) {
  std::atomic<bool> any{false};
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    bool seen = false;
    for (int64_t i = begin; i < end; ++i) seen |= predicate(i);
    if (seen) any = true;
  });
  return any;
}

// coords int32 [N, 4], contiguous and already checked -> packed keys int64 [N].
at::Tensor pack_rows_cpu(const at::Tensor& coords);

}  // namespace pointsparse
