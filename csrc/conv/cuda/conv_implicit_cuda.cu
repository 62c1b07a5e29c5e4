// The CUDA implicit GEMM (pointsparse::conv_implicit): output-stationary tiles of reordered output
// rows over the neighbour table (implicit_kernels.cuh); its weight gradient runs the map's pairs
// through the gather-GEMM-scatter driver.
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include "../conv_checks.h"
#include "async_copy.cuh"
#include "conv_ggs_cuda.h"
#include "implicit_kernels.cuh"

namespace pointsparse {
namespace {

// Splits run in order (the first assigns), each one launch over its tiles, summed in float32 (half /
// bfloat16 round once, at the end). On sm_80+ the tiled kernel: tensor cores for half / bfloat16,
// and for float32 as TF32 when torch allows it (as for cuBLAS), FP32 FMA tiles for exact float32;
// else, and for float64, the SIMT kernel. Neighbour rows are asserted in range per element.
at::Tensor conv_implicit_cuda(const at::Tensor& feats_, const at::Tensor& weight_, const at::Tensor& neighbors,
                              const at::Tensor& order, const at::Tensor& tile_masks, const at::Tensor& neighbors_t,
                              const at::Tensor& order_t, const at::Tensor& tile_masks_t, const at::Tensor& offset_ptr,
                              const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t tile_rows) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats_));
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ImplicitInputs in = check_conv_implicit(feats_, weight_, neighbors, order, tile_masks, tile_rows);
  const at::Tensor weight = weight_.contiguous();  // [K, C_in, C_out]
  const int64_t K = weight.size(0), C_in = weight.size(1), C_out = weight.size(2), n_out = in.neighbors.size(0);
  at::Tensor acc = at::zeros({n_out, C_out}, in.feats.options().dtype(at::toOpMathType(in.feats.scalar_type())));
  if (n_out * C_out > 0 && in.tiles > 0) {
    const int32_t* nbr = in.neighbors.data_ptr<int32_t>();
    const at::ScalarType dtype = in.feats.scalar_type();
    const bool tiled = (at::isReducedFloatingType(dtype) || dtype == at::kFloat) &&
                       at::cuda::getCurrentDeviceProperties()->major >= 8;
    const auto for_each_split = [&](const auto& launch) {
      const int32_t* order_ptr = in.order.data_ptr<int32_t>();
      const int32_t* masks_ptr = in.tile_masks.data_ptr<int32_t>();
      implicit_gemm::for_each_split(order_ptr, masks_ptr, in.splits, n_out, in.tiles, in.words,
                                    [&](const int32_t* split_order, const int32_t* masks, bool assign) {
                                      launch(split_order, masks, assign);
                                      C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    });
    };
    if (tiled) {
      namespace tc = implicit_gemm::tiled;
      const bool tensor_cores = dtype != at::kFloat || at::globalContext().allowTF32CuBLAS();
      const auto run = [&](auto element) {
        using scalar_t = decltype(element);
        const auto kernel = tc::kernel_for<scalar_t>(C_out, tensor_cores);
        for_each_split([&](const int32_t* split_order, const int32_t* masks, bool assign) {
          kernel<<<tc::grid(in.tiles, C_out), tc::kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              in.feats.data_ptr<scalar_t>(), C_in, nbr, K, split_order, masks, in.words, n_out, tile_rows,
              weight.data_ptr<scalar_t>(), C_out, assign, acc.data_ptr<float>());
        });
      };
      if (dtype == at::kFloat) {
        run(float());
      } else if (dtype == at::kHalf) {
        run(c10::Half());
      } else {
        run(c10::BFloat16());
      }
    } else {
      namespace simt = implicit_gemm::simt;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.feats.scalar_type(), "conv_implicit_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        for_each_split([&](const int32_t* split_order, const int32_t* masks, bool assign) {
          simt::implicit_kernel<<<simt::grid(in.tiles, C_out), simt::block(), 0, at::cuda::getCurrentCUDAStream()>>>(
              in.feats.data_ptr<scalar_t>(), C_in, nbr, K, split_order, masks, in.words, n_out, tile_rows,
              weight.data_ptr<scalar_t>(), C_out, assign, acc.data_ptr<acc_t>());
        });
      });
    }
  }
  return acc.scalar_type() == in.feats.scalar_type() ? acc : acc.to(in.feats.scalar_type());
}

at::Tensor conv_implicit_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out,
                                          const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                          const at::Tensor& out_idx) {
  return conv_weight_grad_cuda(feats, grad_out, offset_ptr, in_idx, out_idx, -1);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("conv_implicit", &conv_implicit_cuda);
  m.impl("conv_implicit_weight_grad", &conv_implicit_weight_grad_cuda);
}

}  // namespace pointsparse
