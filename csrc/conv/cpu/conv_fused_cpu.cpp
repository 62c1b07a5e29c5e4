// The fused CPU dataflow (pointsparse::conv_fused, conv_fused_affine_relu and their weight
// gradient): the pairs and the results of conv_gather_scatter without gathered copies or ATen GEMM
// calls, output rows in L2-sized blocks, register-blocked kernels of fused_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include <unistd.h>

#include "../../common/for_each_task.h"
#include "../../norm/norm_checks.h"
#include "../conv_checks.h"
#include "fused_kernels.h"

namespace pointsparse {
namespace {

constexpr int64_t kGradTask = 4096;  // pairs per weight-gradient task

// Output rows in blocks small enough to stay in L2 while every offset adds into them: one pass
// over the output instead of one per offset. The pairs of offset k whose output row lies in block b
// are [start[k][b], start[k][b + 1]) of in_idx / out_idx, which are the map's own arrays when each
// offset's pairs come sorted by output row (forward maps) and otherwise a copy bucketed by block,
// each bucket keeping the map's order (so every row sums the same terms in the same order).
struct RowBlocks {
  int64_t rows = 0, count = 0;  // rows of a full block; blocks
  int64_t tail_start = 0, tail_rows = 0;  // from tail_start on, blocks of tail_rows rows
  std::vector<int64_t> start;  // [K][count + 1]
  at::Tensor in_idx, out_idx;  // int32 [P]
  int64_t begin(int64_t k, int64_t b) const { return start[k * (count + 1) + b]; }
  int64_t head_count() const { return tail_start / rows; }
  int64_t first_row(int64_t b, int64_t num_out) const {
    return std::min(num_out, b < head_count() ? b * rows : tail_start + (b - head_count()) * tail_rows);
  }
  int64_t block_of(int64_t row) const {
    return row < tail_start ? row / rows : head_count() + (row - tail_start) / tail_rows;
  }
};

// Output bytes per block: a quarter of the core's L2 (256 KiB of a 1 MiB L2 measured 1-4 % faster
// than 128 KiB on 96- and 256-channel layers of a LiDAR scan: fewer, longer runs of pairs per
// offset), 128 KiB where the L2 size is unknown.
int64_t block_bytes() {
  static const int64_t bytes = [] {
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return l2 > 0 ? std::max<int64_t>(64 * 1024, l2 / 4) : int64_t(128 * 1024);
  }();
  return bytes;
}

RowBlocks row_blocks(const ConvPairs& pairs, int64_t num_out, int64_t row_bytes, int64_t identity_offset) {
  RowBlocks blocks;
  const int64_t threads = at::get_num_threads();
  blocks.rows = std::max<int64_t>(16, std::min(block_bytes() / std::max<int64_t>(row_bytes, 1),
                                               (num_out + 4 * threads - 1) / (4 * threads)));
  // The last 2 * threads blocks' rows go in blocks a quarter as large, so that the threads finish
  // together (small strided and 1x1 convs: 5-10 % faster; large layers: no change).
  const int64_t R = blocks.rows;
  blocks.tail_start = std::max<int64_t>(0, num_out - 2 * threads * R) / R * R;
  blocks.tail_rows = std::max<int64_t>(16, R / 4);
  blocks.count = blocks.head_count() + (num_out - blocks.tail_start + blocks.tail_rows - 1) / blocks.tail_rows;
  const int64_t K = pairs.K, stride = blocks.count + 1;
  const int64_t* ptr = pairs.ptr();
  const int32_t* out = pairs.out_idx.data_ptr<int32_t>();
  std::vector<char> sorted(K, 1);
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      bool ascending = true;  // a local: threads writing neighbouring chars would share a cache line
      for (int64_t p = ptr[k] + 1; p < ptr[k + 1]; ++p) ascending &= out[p - 1] <= out[p];
      sorted[k] = ascending;
    }
  });
  const bool all_sorted = std::all_of(sorted.begin(), sorted.end(), [](char c) { return c != 0; });
  blocks.start.assign(K * stride, 0);
  if (all_sorted) {
    blocks.in_idx = pairs.in_idx, blocks.out_idx = pairs.out_idx;
  } else {
    blocks.in_idx = at::empty_like(pairs.in_idx), blocks.out_idx = at::empty_like(pairs.out_idx);
  }
  const int32_t* in = pairs.in_idx.data_ptr<int32_t>();
  int32_t* bin = blocks.in_idx.data_ptr<int32_t>();
  int32_t* bout = blocks.out_idx.data_ptr<int32_t>();
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t* start = blocks.start.data() + k * stride;
      if (k == identity_offset) {
        std::fill(start, start + stride, ptr[k]);  // runs separately, as an assignment
      } else if (all_sorted) {
        for (int64_t b = 0; b <= blocks.count; ++b) {
          start[b] = std::lower_bound(out + ptr[k], out + ptr[k + 1], int32_t(blocks.first_row(b, num_out))) - out;
        }
      } else {  // counting sort of the offset's pairs by block, stable
        std::vector<int64_t> fill(stride, 0);
        for (int64_t p = ptr[k]; p < ptr[k + 1]; ++p) ++fill[blocks.block_of(out[p]) + 1];
        fill[0] = ptr[k];
        for (int64_t b = 1; b < stride; ++b) fill[b] += fill[b - 1];
        std::copy(fill.begin(), fill.end(), start);
        for (int64_t p = ptr[k]; p < ptr[k + 1]; ++p) {
          const int64_t q = fill[blocks.block_of(out[p])]++;
          bin[q] = in[p], bout[q] = out[p];
        }
      }
    }
  });
  return blocks;
}

// Whether every output row has exactly one pair over all offsets (a transposed k2 s2 conv, the input
// gradient of a strided one): then each pair assigns its row, with no zero fill and no read-back.
bool covers_each_row_once(const ConvPairs& pairs, int64_t num_out, int64_t identity_offset) {
  if (identity_offset >= 0 || pairs.ptr()[pairs.K] != num_out) return false;
  std::vector<uint8_t> seen(num_out, 0);
  const int32_t* out = pairs.out_idx.data_ptr<int32_t>();
  for (int64_t p = 0; p < num_out; ++p) {
    if (seen[out[p]]++) return false;  // a second pair: some other row has none
  }
  return true;
}

// The eval-mode batch norm (scale, shift per output channel), residual and ReLU a fused conv may
// end with: each block of output rows gets it right after its last offset, while it is in L2,
// instead of a separate pass over the whole output.
struct Epilogue {
  at::Tensor scale, shift;              // [C_out]
  std::optional<at::Tensor> residual;   // [num_out, C_out]
  bool relu;
};

at::Tensor conv_fused_forward(const at::Tensor& feats_, const at::Tensor& weight, const at::Tensor& offset_ptr,
                              const at::Tensor& in_idx_, const at::Tensor& out_idx_, int64_t num_out,
                              int64_t identity_offset, const Epilogue* epilogue) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ConvPairs pairs = check_conv_forward(feats_, weight, offset_ptr, in_idx_, out_idx_, num_out,
                                             identity_offset);
  const int64_t C_in = weight.size(1), C_out = weight.size(2);
  const Isa isa = cpu_isa();
  const at::Tensor packed = vector_padded_weight(weight, isa);  // [K, C_in, ldw]
  const int64_t ldw = packed.size(2);
  // Every block assigns its rows first (the identity offset, or zeros), so no zero fill here.
  at::Tensor out = at::empty({num_out, C_out}, weight.options());
  if (epilogue) check_affine_operands(out, epilogue->scale, epilogue->shift, epilogue->residual);
  if (num_out == 0 || C_out == 0) return out;
  const RowBlocks blocks = row_blocks(pairs, num_out, C_out * int64_t(weight.element_size()), identity_offset);
  const bool assign_all = covers_each_row_once(pairs, num_out, identity_offset);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_fused_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = pairs.feats.data_ptr<scalar_t>();
    const scalar_t* w = packed.data_ptr<scalar_t>();
    const int32_t* in_idx = blocks.in_idx.data_ptr<int32_t>();
    const int32_t* out_idx = blocks.out_idx.data_ptr<int32_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* scale = epilogue ? epilogue->scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* shift = epilogue ? epilogue->shift.data_ptr<scalar_t>() : nullptr;
    const scalar_t* residual = epilogue && epilogue->residual ? epilogue->residual->data_ptr<scalar_t>() : nullptr;
    // Per row: the identity offset (or zero) first, then the other offsets in ascending order.
    for_each_task(blocks.count, [&](int64_t b) {  // blocks to free threads: rows differ in pairs
      const int64_t r0 = blocks.first_row(b, num_out), r1 = blocks.first_row(b + 1, num_out);
      if (identity_offset >= 0) {
        kernels.forward_assign(feats, C_in, nullptr, nullptr, r0, r1, w + identity_offset * C_in * ldw, ldw, o, C_out);
      } else if (!assign_all) {
        std::memset(o + r0 * C_out, 0, (r1 - r0) * C_out * sizeof(scalar_t));
      }
      const auto run = assign_all ? kernels.forward_assign : kernels.forward_add;
      for (int64_t k = 0; k < pairs.K; ++k) {
        const int64_t begin = blocks.begin(k, b), end = blocks.begin(k, b + 1);
        if (begin == end) continue;
        run(feats, C_in, in_idx, out_idx, begin, end, w + k * C_in * ldw, ldw, o, C_out);
      }
      if (epilogue) {
        kernels.epilogue(o + r0 * C_out, o + r0 * C_out, r1 - r0, C_out, scale, shift,
                         residual ? residual + r0 * C_out : nullptr, epilogue->relu);
      }
    });
  });
  return out;
}

at::Tensor conv_fused_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                          const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t num_out,
                          int64_t identity_offset) {
  if (runs_in_float(feats, weight)) {
    return conv_fused_cpu(feats.to(at::kFloat), weight.to(at::kFloat), offset_ptr, in_idx, out_idx, num_out,
                          identity_offset).to(feats.scalar_type());
  }
  return conv_fused_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset, nullptr);
}

// conv_fused, then relu?(out * scale + shift [+ residual]) per output channel (float32 / float64).
at::Tensor conv_fused_affine_relu_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                                      const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t num_out,
                                      int64_t identity_offset, const at::Tensor& scale, const at::Tensor& shift,
                                      bool relu, const std::optional<at::Tensor>& residual) {
  const Epilogue epilogue{scale, shift, residual, relu};
  return conv_fused_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset, &epilogue);
}

struct GradTask {
  int64_t k, begin, end;  // pairs [begin, end) of offset k; null indices for the identity offset
};

}  // namespace

at::Tensor conv_fused_weight_grad_cpu(const at::Tensor& feats_, const at::Tensor& grad_out_,
                                      const at::Tensor& offset_ptr, const at::Tensor& in_idx_,
                                      const at::Tensor& out_idx_, int64_t identity_offset) {
  if (runs_in_float(feats_, grad_out_)) {
    return conv_fused_weight_grad_cpu(feats_.to(at::kFloat), grad_out_.to(at::kFloat), offset_ptr, in_idx_,
                                      out_idx_, identity_offset).to(feats_.scalar_type());
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor grad_out;
  const ConvPairs pairs = check_conv_weight_grad(feats_, grad_out_, offset_ptr, in_idx_, out_idx_,
                                                 identity_offset, &grad_out);
  const int64_t C_in = pairs.feats.size(1), C_out = grad_out.size(1), K = pairs.K;
  const Isa isa = cpu_isa();
  const int64_t ldi = round_up(std::max<int64_t>(C_in, 1), kTileRows);
  const int64_t ldw = tile_cols_of(C_out, isa, grad_out);
  // Tasks of at most kGradTask pairs of one offset, so the cores share equal work however the
  // offsets' pair counts vary; each task sums into its own slice, reduced per offset below.
  std::vector<GradTask> tasks;
  const int64_t* ptr = pairs.ptr();
  for (int64_t k = 0; k < K; ++k) {
    const int64_t begin = k == identity_offset ? 0 : ptr[k];
    const int64_t end = k == identity_offset ? grad_out.size(0) : ptr[k + 1];
    for (int64_t b = begin; b < end; b += kGradTask) tasks.push_back({k, b, std::min(end, b + kGradTask)});
  }
  const int64_t T = int64_t(tasks.size());
  at::Tensor partial = at::zeros({T, ldi, ldw}, grad_out.options());  // [tasks, ldi, ldw]
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "conv_fused_weight_grad_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = pairs.feats.data_ptr<scalar_t>();
    const scalar_t* grad = grad_out.data_ptr<scalar_t>();
    const int32_t* in_idx = pairs.in_idx.data_ptr<int32_t>();
    const int32_t* out_idx = pairs.out_idx.data_ptr<int32_t>();
    scalar_t* acc = partial.data_ptr<scalar_t>();
    at::parallel_for(0, T, 1, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> a(kGradChunk * ldi, 0), g(kGradChunk * ldw, 0);  // zero padding stays
      for (int64_t t = first; t < last; ++t) {
        const GradTask& task = tasks[t];
        const bool identity = task.k == identity_offset;
        kernels.weight_grad(feats, C_in, grad, C_out, identity ? nullptr : in_idx,
                            identity ? nullptr : out_idx, task.begin, task.end, ldi, ldw, a.data(),
                            g.data(), acc + t * ldi * ldw);
      }
    });
  });
  std::vector<int64_t> task_offsets(T);
  for (int64_t t = 0; t < T; ++t) task_offsets[t] = tasks[t].k;
  at::Tensor grad_weight = at::zeros({K, ldi, ldw}, grad_out.options());
  grad_weight.index_add_(0, at::tensor(task_offsets, at::kLong), partial);
  return grad_weight.narrow(1, 0, C_in).narrow(2, 0, C_out).contiguous();  // [K, C_in, C_out]
}

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("conv_fused", &conv_fused_cpu);
  m.impl("conv_fused_affine_relu", &conv_fused_affine_relu_cpu);
  m.impl("conv_fused_weight_grad", &conv_fused_weight_grad_cpu);
}

}  // namespace pointsparse
