// CUDA gather / scatter rows for the gather-GEMM-scatter convolution: a block row of 32 threads
// walks the channels of one feature row, so no thread divides a flat index. Scatter needs no
// atomics: within one offset every output row occurs once. Indices are asserted per element
// (a host-side range check would synchronise every call).
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

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

constexpr RowKernels kCudaRows{&gather_rows_cuda, &scatter_add_rows_cuda};

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

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("conv_gather_scatter", &conv_gather_scatter_cuda);
  m.impl("conv_weight_grad", &conv_weight_grad_cuda);
}

}  // namespace pointsparse
