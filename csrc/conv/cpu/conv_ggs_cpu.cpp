// CPU gather / scatter rows for the gather-GEMM-scatter convolution (both cores, at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "../conv_driver.h"
#include "../conv_element.h"

namespace pointsparse {
namespace {

// Rows per task: enough work to amortise a task, few enough to spread over the cores.
int64_t row_grain(int64_t channels) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, channels)); }

void gather_rows_cpu(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_rows_cpu", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* d = dst.data_ptr<scalar_t>();
    at::parallel_for(0, n, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t c = 0; c < C; ++c) gather_element(s, idx, p, c, C, d);
      }
    });
  });
}

void scatter_add_rows_cpu(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_add_rows_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* s = src.data_ptr<scalar_t>();
    acc_t* d = dst.data_ptr<acc_t>();
    at::parallel_for(0, n, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t c = 0; c < C; ++c) scatter_add_element(s, idx, p, c, C, d);
      }
    });
  });
}

void gather_padded_rows_cpu(const at::Tensor& src, const int32_t* idx, const SlotTable& table, at::Tensor& dst) {
  const int64_t C = src.size(1), slot_rows = int64_t(table.count) * table.rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_padded_rows_cpu", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    scalar_t* d = dst.data_ptr<scalar_t>();
    at::parallel_for(0, slot_rows, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) gather_padded_row<1>(s, idx, table, i / table.rows, i % table.rows, 0, C, d);
    });
  });
}

// Two walks, one result (each sums a row's contributions in slot order):
// - by output row through pos, as the CUDA kernel does (scatter_slots_row), when the group holds at
//   least one pair per output row on average, so reading pos row by row pays for itself;
// - otherwise slot by slot, the rows of one slot in parallel (within one offset every output row
//   occurs once): a small group touches few output rows, and pos rows are scattered in memory.
void scatter_slots_cpu(const at::Tensor& product, const int32_t* idx, const at::Tensor& pos, const SlotTable& table,
                       at::Tensor& acc) {
  int64_t total_pairs = 0;
  for (int32_t s = 0; s < table.count; ++s) total_pairs += table.pairs[s];
  if (total_pairs < acc.size(0)) {
    for (int32_t s = 0; s < table.count; ++s) {
      scatter_add_rows_cpu(product.select(0, s), idx + table.begin[s], table.pairs[s], acc);  // [rows, C]
    }
    return;
  }
  const int64_t C = product.size(2), K = pos.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, product.scalar_type(), "scatter_slots_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = product.data_ptr<scalar_t>();
    const int32_t* p = pos.data_ptr<int32_t>();
    acc_t* a = acc.data_ptr<acc_t>();
    std::atomic<bool> in_range{true};
    at::parallel_for(0, acc.size(0), row_grain(C * table.count), [&](int64_t begin, int64_t end) {
      bool ok = true;
      for (int64_t o = begin; o < end; ++o) ok &= scatter_slots_row<1>(src, p, K, table, o, 0, C, a);
      if (!ok) in_range = false;
    });
    TORCH_CHECK_VALUE(in_range, "out_pos must hold -1 or a pair of offset k in column k");
  });
}

constexpr RowKernels kCpuRows{&gather_rows_cpu, &scatter_add_rows_cpu, &gather_padded_rows_cpu, &scatter_slots_cpu};

at::Tensor conv_gather_scatter_cpu(const at::Tensor& feats, const at::Tensor& weight,
                                   const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                   const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset) {
  return conv_forward_driver(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset,
                             kCpuRows);
}

at::Tensor conv_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out,
                                const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                const at::Tensor& out_idx, int64_t identity_offset) {
  return conv_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset,
                                 kCpuRows);
}

at::Tensor conv_grouped_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                            const at::Tensor& in_idx, const at::Tensor& out_idx, const at::Tensor& out_pos,
                            const at::Tensor& in_pos, int64_t num_out, int64_t identity_offset,
                            at::IntArrayRef forward_plan, at::IntArrayRef input_grad_plan,
                            at::IntArrayRef weight_grad_plan) {
  return conv_grouped_driver(feats, weight, offset_ptr, in_idx, out_idx, out_pos, num_out, identity_offset,
                             forward_plan, kCpuRows);
}

at::Tensor conv_grouped_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out,
                                        const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                        const at::Tensor& out_idx, int64_t identity_offset, at::IntArrayRef plan) {
  return conv_grouped_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, plan,
                                         kCpuRows);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("conv_gather_scatter", &conv_gather_scatter_cpu);
  m.impl("conv_weight_grad", &conv_weight_grad_cpu);
  m.impl("conv_grouped", &conv_grouped_cpu);
  m.impl("conv_grouped_weight_grad", &conv_grouped_weight_grad_cpu);
}

}  // namespace pointsparse
