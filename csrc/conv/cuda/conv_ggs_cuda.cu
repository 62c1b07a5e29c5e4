// CUDA gather / scatter rows for the gather-GEMM-scatter convolution: a block row of 32 threads
// walks the channels of one feature row, so no thread divides a flat index. Scatter needs no
// atomics: within one offset every output row occurs once. Indices are asserted per element
// (a host-side range check would synchronise every call).
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../conv_checks.h"
#include "../conv_driver.h"
#include "../conv_element.h"

namespace pointsparse {
namespace {

constexpr int kChannelThreads = 32;  // threads along the channels of one row
constexpr int kRowsPerBlock = 8;     // feature rows per block

template <typename T>
__global__ void gather_kernel(const T* src, int64_t src_rows, const int32_t* idx, int64_t n, int64_t C,
                              T* dst) {
  const int64_t p = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.y;
  if (p >= n) return;
  CUDA_KERNEL_ASSERT(row_in_range(idx[p], src_rows));
  for (int64_t c = threadIdx.x; c < C; c += kChannelThreads) gather_element(src, idx, p, c, C, dst);
}

template <typename T, typename Acc>
__global__ void scatter_add_kernel(const T* src, const int32_t* idx, int64_t n, int64_t C, int64_t dst_rows,
                                   Acc* dst) {
  const int64_t p = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.y;
  if (p >= n) return;
  CUDA_KERNEL_ASSERT(row_in_range(idx[p], dst_rows));
  for (int64_t c = threadIdx.x; c < C; c += kChannelThreads) scatter_add_element(src, idx, p, c, C, dst);
}

template <typename T>
__global__ void gather_padded_kernel(const T* src, int64_t src_rows, const int32_t* idx, SlotTable table,
                                     int64_t C, T* dst) {
  const int64_t i = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.y;  // slot row: s * rows + r
  if (i >= int64_t(table.count) * table.rows) return;
  const int64_t s = i / table.rows, r = i % table.rows;
  CUDA_KERNEL_ASSERT(r >= table.pairs[s] || row_in_range(idx[table.begin[s] + r], src_rows));
  gather_padded_row<kChannelThreads>(src, idx, table, s, r, threadIdx.x, C, dst);
}

template <typename T, typename Acc>
__global__ void scatter_slots_kernel(const T* product, const int32_t* pos, int64_t K, SlotTable table, int64_t n,
                                     int64_t C, Acc* acc) {
  const int64_t o = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.y;
  if (o >= n) return;
  const bool in_range = scatter_slots_row<kChannelThreads>(product, pos, K, table, o, threadIdx.x, C, acc);
  CUDA_KERNEL_ASSERT(in_range);
}

dim3 row_blocks(int64_t n) { return dim3(unsigned((n + kRowsPerBlock - 1) / kRowsPerBlock)); }

const dim3 kBlock(kChannelThreads, kRowsPerBlock);

void gather_rows_cuda(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  if (n * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_rows_cuda", [&] {
    gather_kernel<<<row_blocks(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), src.size(0), idx, n, C, dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void scatter_add_rows_cuda(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  if (n * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_add_rows_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_add_kernel<<<row_blocks(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), idx, n, C, dst.size(0), dst.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gather_padded_rows_cuda(const at::Tensor& src, const int32_t* idx, const SlotTable& table, at::Tensor& dst) {
  const int64_t C = src.size(1), slot_rows = int64_t(table.count) * table.rows;
  if (slot_rows * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_padded_rows_cuda", [&] {
    gather_padded_kernel<<<row_blocks(slot_rows), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), src.size(0), idx, table, C, dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One launch per group: each output row gathers its contributions through pos (no atomics).
void scatter_slots_cuda(const at::Tensor& product, const int32_t* idx, const at::Tensor& pos, const SlotTable& table,
                        at::Tensor& acc) {
  const int64_t C = product.size(2), n = acc.size(0);
  if (n * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, product.scalar_type(), "scatter_slots_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scatter_slots_kernel<<<row_blocks(n), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        product.data_ptr<scalar_t>(), pos.data_ptr<int32_t>(), pos.size(1), table, n, C, acc.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr RowKernels kCudaRows{&gather_rows_cuda, &scatter_add_rows_cuda, &gather_padded_rows_cuda,
                               &scatter_slots_cuda};

// The guard is generic (a no-op for a CPU tensor) so that a mixed-device call reaches the
// driver's checks and raises the ValueError that names the tensor.
at::Tensor conv_gather_scatter_cuda(const at::Tensor& feats, const at::Tensor& weight,
                                    const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                    const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  return conv_forward_driver(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset,
                             kCudaRows);
}

at::Tensor conv_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out,
                                 const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                 const at::Tensor& out_idx, int64_t identity_offset) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  return conv_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset,
                                 kCudaRows);
}

at::Tensor conv_grouped_cuda(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                             const at::Tensor& in_idx, const at::Tensor& out_idx, const at::Tensor& out_pos,
                             const at::Tensor& in_pos, int64_t num_out, int64_t identity_offset,
                             at::IntArrayRef forward_plan, at::IntArrayRef input_grad_plan,
                             at::IntArrayRef weight_grad_plan) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  return conv_grouped_driver(feats, weight, offset_ptr, in_idx, out_idx, out_pos, num_out, identity_offset,
                             forward_plan, kCudaRows);
}

at::Tensor conv_grouped_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out,
                                         const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                         const at::Tensor& out_idx, int64_t identity_offset, at::IntArrayRef plan) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  return conv_grouped_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset, plan,
                                         kCudaRows);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("conv_gather_scatter", &conv_gather_scatter_cuda);
  m.impl("conv_weight_grad", &conv_weight_grad_cuda);
  m.impl("conv_grouped", &conv_grouped_cuda);
  m.impl("conv_grouped_weight_grad", &conv_grouped_weight_grad_cuda);
}

}  // namespace pointsparse
