#include "column_range.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <utility>

namespace pointsparse {
namespace {

// Smallest and largest of v[begin, end) folded into lo / hi. Cloned per instruction set (the
// extension is built for baseline x86-64, whose SSE2 has no 32-bit min / max): every conv call
// checks its index arrays with it.
#if defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void fold_bounds(const int32_t* v, int64_t begin, int64_t end, int32_t& lo, int32_t& hi) {
  int32_t l = lo, h = hi;
  for (int64_t i = begin; i < end; ++i) {
    l = std::min(l, v[i]);
    h = std::max(h, v[i]);
  }
  lo = l, hi = h;
}

// The same over the rows [begin, end) of a [N, 4] array (coordinates), column by column.
#if defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void fold_bounds4(const int32_t* v, int64_t begin, int64_t end, int32_t* lo, int32_t* hi) {
  int32_t l[4] = {lo[0], lo[1], lo[2], lo[3]}, h[4] = {hi[0], hi[1], hi[2], hi[3]};
  for (int64_t i = begin; i < end; ++i) {
    for (int c = 0; c < 4; ++c) {
      l[c] = std::min(l[c], v[4 * i + c]);
      h[c] = std::max(h[c], v[4 * i + c]);
    }
  }
  std::copy_n(l, 4, lo), std::copy_n(h, 4, hi);
}

}  // namespace

ColumnRange column_range(const at::Tensor& values, const at::Tensor& flags, std::vector<int32_t>& flag_values) {
  if (values.device().is_cpu()) {
    const at::Tensor host = flags.contiguous();
    flag_values.assign(host.data_ptr<int32_t>(), host.data_ptr<int32_t>() + host.numel());
    return column_range(values);
  }
  // One read-back of both rows and the flags: a single synchronisation (kernel-map builds only,
  // never a conv).
  const int64_t C = values.dim() == 1 ? 1 : values.size(1), F = flags.numel();
  const auto [lo, hi] = at::aminmax(values.view({values.size(0), C}), 0);
  const at::Tensor back = at::cat({lo, hi, flags.view({-1})}).cpu();  // [2 C + F]
  const int32_t* b = back.data_ptr<int32_t>();
  flag_values.assign(b + 2 * C, b + 2 * C + F);
  return ColumnRange{std::vector<int32_t>(b, b + C), std::vector<int32_t>(b + C, b + 2 * C)};
}

ColumnRange column_range(const at::Tensor& values) {
  const int64_t C = values.dim() == 1 ? 1 : values.size(1);
  if (!values.device().is_cpu()) {
    std::vector<int32_t> none;
    return column_range(values, at::empty({0}, values.options()), none);
  }
  ColumnRange range{std::vector<int32_t>(C, INT32_MAX), std::vector<int32_t>(C, INT32_MIN)};
  const at::Tensor rows = values.contiguous();
  const int32_t* v = rows.data_ptr<int32_t>();
  const ColumnRange empty = range;
  if (C == 1) {  // index arrays: the bounds in registers, a loop the compiler vectorises
    using Bounds = std::pair<int32_t, int32_t>;
    const Bounds b = at::parallel_reduce(
        0, rows.size(0), 16384, Bounds{INT32_MAX, INT32_MIN},
        [&](int64_t begin, int64_t end, Bounds part) {
          fold_bounds(v, begin, end, part.first, part.second);
          return part;
        },
        [](const Bounds& a, const Bounds& c) { return Bounds{std::min(a.first, c.first), std::max(a.second, c.second)}; });
    return ColumnRange{{b.first}, {b.second}};
  }
  return at::parallel_reduce(
      0, rows.size(0), 16384, empty,
      [&](int64_t begin, int64_t end, ColumnRange part) {
        if (C == 4) {  // coordinates: the bounds in registers, as for index arrays
          fold_bounds4(v, begin, end, part.lo.data(), part.hi.data());
          return part;
        }
        for (int64_t i = begin; i < end; ++i) {
          for (int64_t c = 0; c < C; ++c) {
            part.lo[c] = std::min(part.lo[c], v[i * C + c]);
            part.hi[c] = std::max(part.hi[c], v[i * C + c]);
          }
        }
        return part;
      },
      [](ColumnRange a, const ColumnRange& b) {
        for (size_t c = 0; c < a.lo.size(); ++c) {
          a.lo[c] = std::min(a.lo[c], b.lo[c]);
          a.hi[c] = std::max(a.hi[c], b.hi[c]);
        }
        return a;
      });
}

}  // namespace pointsparse
