#include "conv_driver.h"

#include "conv_checks.h"

#include <ATen/OpMathType.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <vector>

namespace pointsparse {
namespace {

int64_t largest_group(const int64_t* ptr, int64_t K, int64_t identity_offset) {
  int64_t largest = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (k != identity_offset) largest = std::max(largest, ptr[k + 1] - ptr[k]);
  }
  return largest;
}

// The output being summed: float32 for half / bfloat16 (rounded once, at the end), else the
// feats' dtype. Starts from the identity GEMM when there is one; when that GEMM is all there is (a
// 1x1x1 conv), it is the result, in the feats' dtype, and nothing is added to it.
struct Accumulator {
  at::Tensor sum;  // [num_out, C_out] in the accumulation dtype
  at::ScalarType out_type;

  at::Tensor finish() const { return sum.scalar_type() == out_type ? sum : sum.to(out_type); }
  void check_summing() const {
    TORCH_INTERNAL_ASSERT(sum.scalar_type() == at::toOpMathType(out_type), "pairs outside the identity offset, "
                          "but the sum was started as the identity GEMM's result");
  }
};

Accumulator start_sum(const ConvPairs& pairs, const at::Tensor& weight, int64_t num_out) {
  const at::ScalarType dtype = pairs.feats.scalar_type();
  const at::ScalarType acc_type = at::toOpMathType(dtype);
  if (pairs.identity_offset < 0) {
    return {at::zeros({num_out, weight.size(2)}, pairs.feats.options().dtype(acc_type)), dtype};
  }
  const at::Tensor centre = at::mm(pairs.feats, weight.select(0, pairs.identity_offset));  // [N, C_out]
  // Nothing else to add (a 1x1x1 conv): the GEMM's output is the result, no round trip through float.
  if (pairs.pairs(pairs.identity_offset) == pairs.ptr()[pairs.K]) return {centre, dtype};
  return {centre.scalar_type() == acc_type ? centre : centre.to(acc_type), dtype};
}

// Scratch rows reused by the offsets that run one GEMM each.
struct OffsetBuffers {
  at::Tensor gathered;  // [largest n_k, C_in]
  at::Tensor product;   // [largest n_k, C_out]
};

// acc[out_idx_k] += feats[in_idx_k] @ weight[k]: gather, one GEMM, scatter-add.
void accumulate_offset(const ConvPairs& pairs, const at::Tensor& weight, int64_t k, OffsetBuffers& buffers,
                       Accumulator& acc, const RowKernels& rows) {
  const int64_t n = pairs.pairs(k);
  if (n == 0) return;
  acc.check_summing();
  const int64_t begin = pairs.ptr()[k];
  at::Tensor g = buffers.gathered.narrow(0, 0, n), r = buffers.product.narrow(0, 0, n);
  rows.gather(pairs.feats, pairs.in_idx.data_ptr<int32_t>() + begin, n, g);
  at::mm_out(r, g, weight.select(0, k));  // [n_k, C_in] @ [C_in, C_out]
  rows.scatter_add(r, pairs.out_idx.data_ptr<int32_t>() + begin, n, acc.sum);
}

OffsetBuffers offset_buffers(const ConvPairs& pairs, const at::Tensor& weight, int64_t largest) {
  return {at::empty({largest, pairs.feats.size(1)}, pairs.feats.options()),
          at::empty({largest, weight.size(2)}, pairs.feats.options())};
}

struct OffsetGroup {
  bool batched;
  std::vector<int64_t> offsets;
};

// Parses and validates a plan: [size, batched, k_1 .. k_size] per group; every offset with pairs,
// except the identity offset, exactly once.
std::vector<OffsetGroup> parse_plan(at::IntArrayRef plan, const ConvPairs& pairs) {
  const int64_t K = pairs.K;
  std::vector<char> seen(K, 0);
  std::vector<OffsetGroup> groups;
  for (size_t i = 0; i < plan.size();) {
    TORCH_CHECK_VALUE(i + 2 <= plan.size(), "plan: a group header [size, batched] is cut off at entry ", i);
    const int64_t size = plan[i], batched = plan[i + 1];
    TORCH_CHECK_VALUE(size >= 1 && i + 2 + size_t(size) <= plan.size(), "plan: group at entry ", i,
                      " has size ", size, " but ", plan.size() - i - 2, " entries follow");
    TORCH_CHECK_VALUE(batched == 0 || batched == 1, "plan: batched flag must be 0 or 1, got ", batched);
    TORCH_CHECK_VALUE(!batched || size <= kMaxGroupSlots, "plan: a batched group holds at most ",
                      kMaxGroupSlots, " offsets, got ", size);
    OffsetGroup group{batched == 1, {}};
    for (int64_t j = 0; j < size; ++j) {
      const int64_t k = plan[i + 2 + j];
      TORCH_CHECK_VALUE(k >= 0 && k < K, "plan: offset ", k, " outside [0, ", K, ")");
      TORCH_CHECK_VALUE(k != pairs.identity_offset, "plan: the identity offset ", k,
                        " runs as its own GEMM and must not be in a group");
      TORCH_CHECK_VALUE(!seen[k], "plan: offset ", k, " appears twice");
      seen[k] = 1;
      group.offsets.push_back(k);
    }
    groups.push_back(std::move(group));
    i += 2 + size;
  }
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(seen[k] || k == pairs.identity_offset || pairs.pairs(k) == 0, "plan: offset ", k,
                      " has ", pairs.pairs(k), " pairs but is in no group");
  }
  return groups;
}

SlotTable slot_table(const OffsetGroup& group, const ConvPairs& pairs) {
  SlotTable table{};
  table.count = int32_t(group.offsets.size());
  for (int32_t s = 0; s < table.count; ++s) {
    const int64_t k = group.offsets[s];
    table.offset[s] = int32_t(k);
    table.begin[s] = pairs.ptr()[k];
    table.pairs[s] = int32_t(pairs.pairs(k));
    table.rows = std::max(table.rows, table.pairs[s]);
  }
  return table;
}

// [G, rows_a, cols] slices of a [K, rows_a, cols] tensor in group order (one stack kernel).
at::Tensor stack_offsets(const at::Tensor& per_offset, const OffsetGroup& group) {
  std::vector<at::Tensor> slices;
  for (const int64_t k : group.offsets) slices.push_back(per_offset.select(0, k));
  return at::stack(slices);
}

// Rows of the largest batched group's padded buffer (count x rows), so that one allocation serves
// every group of a call: fresh large buffers per group cost page faults.
int64_t largest_batched(const std::vector<OffsetGroup>& groups, const ConvPairs& pairs) {
  int64_t largest = 0;
  for (const OffsetGroup& group : groups) {
    if (!group.batched) continue;
    int64_t rows = 0;
    for (const int64_t k : group.offsets) rows = std::max(rows, pairs.pairs(k));
    largest = std::max(largest, rows * int64_t(group.offsets.size()));
  }
  return largest;
}

// [count, rows, C] view of the front of a [largest, C] buffer.
at::Tensor slots_view(const at::Tensor& buffer, const SlotTable& table) {
  return buffer.narrow(0, 0, int64_t(table.count) * table.rows).view({table.count, table.rows, buffer.size(1)});
}

int64_t largest_separate(const std::vector<OffsetGroup>& groups, const ConvPairs& pairs) {
  int64_t largest = 0;
  for (const OffsetGroup& group : groups) {
    if (group.batched) continue;
    for (const int64_t k : group.offsets) largest = std::max(largest, pairs.pairs(k));
  }
  return largest;
}

}  // namespace

at::Tensor conv_forward_driver(const at::Tensor& feats, const at::Tensor& weight,
                               const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset,
                               const RowKernels& rows) {
  // Autocast casts the inputs before the op (pointsparse/ops/autocast.py); inside, every GEMM runs
  // in the dtype it is given.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ConvPairs pairs = check_conv_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out,
                                             identity_offset);
  Accumulator acc = start_sum(pairs, weight, num_out);
  OffsetBuffers buffers = offset_buffers(pairs, weight, largest_group(pairs.ptr(), pairs.K, identity_offset));
  for (int64_t k = 0; k < pairs.K; ++k) {
    if (k != identity_offset) accumulate_offset(pairs, weight, k, buffers, acc, rows);
  }
  return acc.finish();
}

at::Tensor conv_grouped_driver(const at::Tensor& feats, const at::Tensor& weight,
                               const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                               const at::Tensor& out_idx, const at::Tensor& out_pos, int64_t num_out,
                               int64_t identity_offset, at::IntArrayRef plan, const RowKernels& rows) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ConvPairs pairs = check_conv_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out,
                                             identity_offset);
  const at::Tensor pos = check_pair_positions(out_pos, num_out, pairs, "out_pos");
  const std::vector<OffsetGroup> groups = parse_plan(plan, pairs);
  Accumulator acc = start_sum(pairs, weight, num_out);
  OffsetBuffers buffers = offset_buffers(pairs, weight, largest_separate(groups, pairs));
  const OffsetBuffers padded = offset_buffers(pairs, weight, largest_batched(groups, pairs));
  for (const OffsetGroup& group : groups) {
    if (!group.batched) {
      for (const int64_t k : group.offsets) accumulate_offset(pairs, weight, k, buffers, acc, rows);
      continue;
    }
    const SlotTable table = slot_table(group, pairs);
    if (table.rows == 0) continue;
    at::Tensor gathered = slots_view(padded.gathered, table);  // [G, M, C_in]
    at::Tensor product = slots_view(padded.product, table);    // [G, M, C_out]
    rows.gather_padded(pairs.feats, pairs.in_idx.data_ptr<int32_t>(), table, gathered);
    at::bmm_out(product, gathered, stack_offsets(weight, group));
    acc.check_summing();
    rows.scatter_slots(product, pairs.out_idx.data_ptr<int32_t>(), pos, table, acc.sum);
  }
  return acc.finish();
}

at::Tensor conv_weight_grad_driver(const at::Tensor& feats, const at::Tensor& grad_out,
                                   const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                   const at::Tensor& out_idx, int64_t identity_offset,
                                   const RowKernels& rows) {
  std::vector<int64_t> plan;  // every offset one GEMM
  for (int64_t k = 0; k + 1 < offset_ptr.numel(); ++k) {
    if (k != identity_offset) plan.insert(plan.end(), {1, 0, k});
  }
  return conv_grouped_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, plan,
                                         rows);
}

at::Tensor conv_grouped_weight_grad_driver(const at::Tensor& feats, const at::Tensor& grad_out_,
                                           const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                           const at::Tensor& out_idx, int64_t identity_offset,
                                           at::IntArrayRef plan, const RowKernels& rows) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor grad_out;
  const ConvPairs pairs = check_conv_weight_grad(feats, grad_out_, offset_ptr, in_idx, out_idx,
                                                 identity_offset, &grad_out);
  const std::vector<OffsetGroup> groups = parse_plan(plan, pairs);
  const int64_t C_in = pairs.feats.size(1), C_out = grad_out.size(1);
  // Every slot but the identity's may lack pairs, and is then zero; a 1x1x1 conv's one slot is written whole.
  at::Tensor grad_weight = pairs.K == 1 && identity_offset == 0
                               ? at::empty({1, C_in, C_out}, pairs.feats.options())
                               : at::zeros({pairs.K, C_in, C_out}, pairs.feats.options());
  if (identity_offset >= 0) {
    at::Tensor slot = grad_weight.select(0, identity_offset);
    at::mm_out(slot, pairs.feats.t(), grad_out);  // [C_in, N] @ [N, C_out]
  }
  const int64_t largest = largest_separate(groups, pairs), largest_padded = largest_batched(groups, pairs);
  at::Tensor gathered_in = at::empty({largest, C_in}, pairs.feats.options());
  at::Tensor gathered_out = at::empty({largest, C_out}, pairs.feats.options());
  const at::Tensor padded_in = at::empty({largest_padded, C_in}, pairs.feats.options());
  const at::Tensor padded_out = at::empty({largest_padded, C_out}, pairs.feats.options());
  const int32_t* in_rows = pairs.in_idx.data_ptr<int32_t>();
  const int32_t* out_rows = pairs.out_idx.data_ptr<int32_t>();
  for (const OffsetGroup& group : groups) {
    if (!group.batched) {
      for (const int64_t k : group.offsets) {
        const int64_t n = pairs.pairs(k), begin = pairs.ptr()[k];
        if (n == 0) continue;
        at::Tensor a = gathered_in.narrow(0, 0, n), b = gathered_out.narrow(0, 0, n);
        rows.gather(pairs.feats, in_rows + begin, n, a);
        rows.gather(grad_out, out_rows + begin, n, b);
        at::Tensor slot = grad_weight.select(0, k);
        at::mm_out(slot, a.t(), b);  // [C_in, n_k] @ [n_k, C_out]
      }
      continue;
    }
    const SlotTable table = slot_table(group, pairs);
    if (table.rows == 0) continue;
    at::Tensor a = slots_view(padded_in, table);   // [G, M, C_in]
    at::Tensor b = slots_view(padded_out, table);  // [G, M, C_out]
    rows.gather_padded(pairs.feats, in_rows, table, a);  // [G, M, C_in], zero rows past n_k
    rows.gather_padded(grad_out, out_rows, table, b);    // [G, M, C_out]
    const at::Tensor products = at::bmm(a.transpose(1, 2), b);  // [G, C_in, C_out]
    for (int32_t s = 0; s < table.count; ++s) grad_weight.select(0, table.offset[s]).copy_(products.select(0, s));
  }
  return grad_weight;
}

}  // namespace pointsparse
