// CUDA gather / scatter rows for the gather-GEMM-scatter convolution: one thread per element.
// Scatter needs no atomics: within one offset every output row occurs once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../conv_driver.h"
#include "../conv_element.h"

namespace pointsparse {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void gather_kernel(const T* src, const int32_t* idx, int64_t n, int64_t C, T* dst) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n * C) gather_element(src, idx, t / C, t % C, C, dst);
}

template <typename T>
__global__ void scatter_add_kernel(const T* src, const int32_t* idx, int64_t n, int64_t C, T* dst) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n * C) scatter_add_element(src, idx, t / C, t % C, C, dst);
}

unsigned int blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

void gather_rows_cuda(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  if (n * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "gather_rows_cuda", [&] {
    gather_kernel<<<blocks_for(n * C), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), idx, n, C, dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void scatter_add_rows_cuda(const at::Tensor& src, const int32_t* idx, int64_t n, at::Tensor& dst) {
  const int64_t C = src.size(1);
  if (n * C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_add_rows_cuda", [&] {
    scatter_add_kernel<<<blocks_for(n * C), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        src.data_ptr<scalar_t>(), idx, n, C, dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr RowKernels kCudaRows{&gather_rows_cuda, &scatter_add_rows_cuda};

at::Tensor conv_gather_scatter_cuda(const at::Tensor& feats, const at::Tensor& weight,
                                    const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                    const at::Tensor& out_idx, int64_t num_out, int64_t identity_offset) {
  const c10::cuda::CUDAGuard guard(feats.device());
  return conv_forward_driver(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset,
                             kCudaRows);
}

at::Tensor conv_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out,
                                 const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                 const at::Tensor& out_idx, int64_t identity_offset) {
  const c10::cuda::CUDAGuard guard(feats.device());
  return conv_weight_grad_driver(feats, grad_out, offset_ptr, in_idx, out_idx, identity_offset,
                                 kCudaRows);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("conv_gather_scatter", &conv_gather_scatter_cuda);
  m.impl("conv_weight_grad", &conv_weight_grad_cuda);
}

}  // namespace pointsparse
