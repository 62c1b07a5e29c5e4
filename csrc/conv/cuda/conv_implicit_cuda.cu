// The CUDA implicit GEMM (pointsparse::conv_implicit): output-stationary tiles of reordered output
// rows over the neighbour table (implicit_kernels.cuh); its weight gradient reads the same table in
// the same order (implicit_weight_grad_kernels.cuh).
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

#include <optional>

#include "../conv_checks.h"
#include "../conv_epilogue.h"
#include "async_copy.cuh"
#include "implicit_kernels.cuh"
#include "implicit_weight_grad_kernels.cuh"

namespace pointsparse {
namespace {

// run(element) with a value of the tiled kernels' element type for dtype (float32, half or bfloat16).
template <typename Run>
void for_tiled_dtype(at::ScalarType dtype, const Run& run) {
  if (dtype == at::kFloat) {
    run(float());
  } else if (dtype == at::kHalf) {
    run(c10::Half());
  } else {
    run(c10::BFloat16());
  }
}

// The epilogue's operands: scale and shift [C_out] as given (the tiled kernels read them in float,
// the SIMT path in its accumulator's type), the residual in the output's dtype.
struct EpilogueTensors {
  at::Tensor scale, shift;
  std::optional<at::Tensor> residual;
  bool relu;
};

// Splits run in order (the first assigns), each one launch over its tiles, summed in float32. The
// tiled kernels read a transposed weight view in place (the input gradient's); the SIMT kernel a
// contiguous copy. On
// sm_80+ the tiled kernel: tensor cores for half / bfloat16, and for float32 as TF32 when torch allows
// it (as for cuBLAS), FP32 FMA tiles for exact float32; the last split writes the output in its dtype
// from the float sums through the epilogue (half / bfloat16 round once; one split needs no float
// buffer). Else, and for float64, the SIMT kernel into an accumulator of the op-math type, the
// epilogue after it. Neighbour rows are asserted in range per element.
at::Tensor implicit_forward(const ImplicitInputs& in, const at::Tensor& weight_, const EpilogueTensors* epilogue) {
  const int64_t K = weight_.size(0), C_in = weight_.size(1), C_out = weight_.size(2), n_out = in.neighbors.size(0);
  const int64_t tile_rows = in.tile_rows;
  const at::ScalarType dtype = in.feats.scalar_type();
  const int32_t* nbr = in.neighbors.data_ptr<int32_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto for_each_split = [&](const auto& launch) {
    implicit_gemm::for_each_split(in.order.data_ptr<int32_t>(), in.tile_masks.data_ptr<int32_t>(), in.splits, n_out,
                                  in.tiles, in.words,
                                  [&](const int32_t* split_order, const int32_t* masks, bool assign, bool last) {
                                    launch(split_order, masks, assign, last);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  };
  const bool tiled = (at::isReducedFloatingType(dtype) || dtype == at::kFloat) &&
                     at::cuda::getCurrentDeviceProperties()->major >= 8;
  if (tiled && n_out * C_out > 0 && in.tiles > 0) {
    namespace tc = implicit_gemm::tiled;
    // The input gradient passes weight.transpose(1, 2) of a contiguous weight: read in place, no copy.
    const bool transposed = !weight_.is_contiguous() && weight_.transpose(1, 2).is_contiguous();
    const at::Tensor weight = transposed ? weight_ : weight_.contiguous();  // [K, C_in, C_out] (logical)
    const bool tensor_cores = dtype != at::kFloat || at::globalContext().allowTF32CuBLAS();
    at::Tensor out = at::empty({n_out, C_out}, in.feats.options());  // every row written by the last split
    at::Tensor acc = dtype == at::kFloat ? out
                     : in.splits > 1     ? at::empty({n_out, C_out}, in.feats.options().dtype(at::kFloat))
                                         : at::Tensor();
    const at::Tensor scale = epilogue ? epilogue->scale.to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor shift = epilogue ? epilogue->shift.to(at::kFloat).contiguous() : at::Tensor();
    const auto run = [&](auto element) {
      using scalar_t = decltype(element);
      implicit_gemm::tiled::Epilogue<scalar_t> apply;
      if (epilogue != nullptr) {
        apply.scale = scale.data_ptr<float>();
        apply.shift = shift.data_ptr<float>();
        apply.residual = epilogue->residual ? epilogue->residual->data_ptr<scalar_t>() : nullptr;
        apply.relu = epilogue->relu;
      }
      const auto kernel = tc::kernel_for<scalar_t>(C_out, tensor_cores);
      float* acc_ptr = acc.defined() ? acc.data_ptr<float>() : nullptr;
      for_each_split([&](const int32_t* split_order, const int32_t* masks, bool assign, bool last) {
        kernel<<<tc::grid(in.tiles, C_out), tc::kThreadsPerBlock, 0, stream>>>(
            in.feats.data_ptr<scalar_t>(), C_in, nbr, K, split_order, masks, in.words, n_out, tile_rows,
            weight.data_ptr<scalar_t>(), C_out, assign, last, acc_ptr, out.data_ptr<scalar_t>(), transposed, apply);
      });
    };
    for_tiled_dtype(dtype, run);
    return out;
  }
  at::Tensor acc = at::zeros({n_out, C_out}, in.feats.options().dtype(at::toOpMathType(dtype)));
  if (n_out * C_out > 0 && in.tiles > 0) {
    const at::Tensor weight = weight_.contiguous();  // [K, C_in, C_out]
    namespace simt = implicit_gemm::simt;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "conv_implicit_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for_each_split([&](const int32_t* split_order, const int32_t* masks, bool assign, bool) {
        simt::implicit_kernel<<<simt::grid(in.tiles, C_out), simt::block(), 0, stream>>>(
            in.feats.data_ptr<scalar_t>(), C_in, nbr, K, split_order, masks, in.words, n_out, tile_rows,
            weight.data_ptr<scalar_t>(), C_out, assign, acc.data_ptr<acc_t>());
      });
    });
  }
  if (epilogue != nullptr) acc = affine_relu_after(acc, epilogue->scale, epilogue->shift, epilogue->residual, epilogue->relu);
  return acc.scalar_type() == dtype ? acc : acc.to(dtype);
}

at::Tensor conv_implicit_cuda(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& neighbors,
                              const at::Tensor& order, const at::Tensor& tile_masks, const at::Tensor& neighbors_t,
                              const at::Tensor& order_t, const at::Tensor& tile_masks_t, const at::Tensor& offset_ptr,
                              const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t tile_rows,
                              bool /*symmetric: the input gradient's*/) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return implicit_forward(check_conv_implicit(feats, weight, neighbors, order, tile_masks, tile_rows), weight, nullptr);
}

// The eval-mode batch norm, residual and ReLU in the tiled kernel's store (inference: no autograd).
at::Tensor conv_implicit_affine_relu_cuda(const at::Tensor& feats, const at::Tensor& weight,
                                          const at::Tensor& neighbors, const at::Tensor& order,
                                          const at::Tensor& tile_masks, int64_t tile_rows, const at::Tensor& scale,
                                          const at::Tensor& shift, bool relu,
                                          const std::optional<at::Tensor>& residual) {
  const c10::OptionalDeviceGuard guard(at::device_of(feats));
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ImplicitInputs in = check_conv_implicit(feats, weight, neighbors, order, tile_masks, tile_rows);
  check_implicit_epilogue(in.feats, in.neighbors.size(0), weight.size(2), scale, shift, residual);
  const EpilogueTensors epilogue{scale, shift, residual ? std::optional<at::Tensor>(residual->contiguous()) : std::nullopt,
                                 relu};
  return implicit_forward(in, weight, &epilogue);
}

// Split-K over chunks of the forward's reorder tiles: enough chunks for about 8 blocks per SM, each
// block's partial sum in its own slice of a float workspace (at most 64 Mi entries), then one
// reduction launch in a fixed order (skipped for float32 in one chunk). Same kernels and precision
// choices as the forward.
at::Tensor conv_implicit_weight_grad_cuda(const at::Tensor& feats_, const at::Tensor& grad_out_,
                                          const at::Tensor& neighbors, const at::Tensor& order,
                                          const at::Tensor& tile_masks, int64_t tile_rows, const at::Tensor& offset_ptr,
                                          const at::Tensor& in_idx, const at::Tensor& out_idx) {
  namespace wg = implicit_gemm::weight_grad;
  const c10::OptionalDeviceGuard guard(at::device_of(feats_));
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ImplicitInputs in =
      check_conv_implicit_weight_grad(feats_, grad_out_, neighbors, order, tile_masks, tile_rows, /*entries=*/false);
  const at::Tensor grad_out = grad_out_.contiguous();  // [N_out, C_out]
  const int64_t K = in.neighbors.size(1), C_in = in.feats.size(1), C_out = grad_out.size(1);
  const int64_t n_out = in.neighbors.size(0), size = K * C_in * C_out;
  const at::ScalarType dtype = in.feats.scalar_type();
  if (size == 0 || in.tiles == 0) return at::zeros({K, C_in, C_out}, in.feats.options());
  const bool tiled = (at::isReducedFloatingType(dtype) || dtype == at::kFloat) &&
                     at::cuda::getCurrentDeviceProperties()->major >= 8;
  const dim3 one_chunk = tiled ? wg::tiled::grid(1, K, C_in, C_out) : wg::simt::grid(1, K, C_in, C_out);
  const int64_t channel_blocks = one_chunk.z;
  TORCH_CHECK_VALUE(K <= 65535 && channel_blocks <= 65535, "the implicit weight gradient runs at most 65535 offsets ",
                    "and 65535 channel tiles (grid y / z), got ", K, " offsets and ", channel_blocks,
                    " tiles of C_in = ", C_in, " x C_out = ", C_out);
  const int64_t target_blocks = 8 * int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const wg::Chunking cut = wg::chunking(in.tiles, K * channel_blocks, target_blocks, size, int64_t(1) << 26);
  const at::ScalarType acc_type = at::toOpMathType(dtype);
  at::Tensor partial = at::empty({cut.chunks, K, C_in, C_out}, in.feats.options().dtype(acc_type));
  const int32_t* nbr = in.neighbors.data_ptr<int32_t>();
  const int32_t* order_ptr = in.order.data_ptr<int32_t>();
  const int32_t* masks_ptr = in.tile_masks.data_ptr<int32_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (tiled) {
    const bool tensor_cores = dtype != at::kFloat || at::globalContext().allowTF32CuBLAS();
    const auto run = [&](auto element) {
      using scalar_t = decltype(element);
      wg::tiled::kernel_for<scalar_t>(C_out, tensor_cores)<<<wg::tiled::grid(cut.chunks, K, C_in, C_out),
                                                             wg::tiled::kThreadsPerBlock, 0, stream>>>(
          in.feats.data_ptr<scalar_t>(), C_in, grad_out.data_ptr<scalar_t>(), C_out, nbr, K, order_ptr, masks_ptr,
          in.splits, in.words, n_out, tile_rows, in.tiles, cut.tiles_per_chunk, partial.data_ptr<float>());
    };
    for_tiled_dtype(dtype, run);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "conv_implicit_weight_grad_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      wg::simt::weight_grad_kernel<scalar_t, acc_t><<<wg::simt::grid(cut.chunks, K, C_in, C_out), wg::simt::block(),
                                                      0, stream>>>(
          in.feats.data_ptr<scalar_t>(), C_in, grad_out.data_ptr<scalar_t>(), C_out, nbr, K, order_ptr, masks_ptr,
          in.splits, in.words, n_out, tile_rows, in.tiles, cut.tiles_per_chunk, partial.data_ptr<acc_t>());
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (cut.chunks == 1 && acc_type == dtype) return partial.view({K, C_in, C_out});
  at::Tensor grad_weight = at::empty({K, C_in, C_out}, in.feats.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "conv_implicit_weight_grad_sum", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    wg::sum_partials_kernel<acc_t, scalar_t><<<wg::sum_grid(size), wg::kSumThreads, 0, stream>>>(
        partial.data_ptr<acc_t>(), cut.chunks, size, grad_weight.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("conv_implicit", &conv_implicit_cuda);
  m.impl("conv_implicit_affine_relu", &conv_implicit_affine_relu_cuda);
  m.impl("conv_implicit_weight_grad", &conv_implicit_weight_grad_cuda);
}

}  // namespace pointsparse
