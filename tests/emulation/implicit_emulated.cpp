// The implicit-GEMM CUDA kernels (csrc/conv/cuda/implicit_kernels.cuh, implicit_weight_grad_kernels.cuh)
// built for the host with the emulated CUDA names, behind C entries that tests/test_implicit_kernels.py
// calls through ctypes. They launch as conv_implicit_cuda / conv_implicit_weight_grad_cuda do: the
// forward's splits in order, one launch each, the first assigning; the weight gradient's partial sums,
// then their reduction.
#include "async_copy.h"  // before the kernels: the CUDA names they use
#include "wmma.h"

#include "conv/cuda/implicit_kernels.cuh"
#include "conv/cuda/implicit_weight_grad_kernels.cuh"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using namespace pointsparse::implicit_gemm;
using pointsparse::implicit_gemm::tiled::Epilogue;

enum Kernel { kSimt = 0, kTensorCore = 1, kFmaTile = 2 };
enum DType { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// out: [n_out, C_out] in Acc for the SIMT kernel, in T for the tiled ones (which sum splits in a
// float buffer of their own, as conv_implicit_cuda does, and apply the epilogue in their store).
template <typename T, typename Acc>
std::string run(int kernel, const void* feats, int64_t C_in, const int32_t* neighbors, int64_t K,
                const int32_t* order, const int32_t* tile_masks, int64_t words, int64_t n_out, int64_t tile_rows,
                int64_t tiles, int64_t splits, const void* weight, int64_t C_out, void* out, const float* scale,
                const float* shift, const void* residual, bool relu, bool weight_transposed) {
  const T* f = static_cast<const T*>(feats);
  const T* w = static_cast<const T*>(weight);
  std::string failure;
  // As conv_implicit_cuda launches them; a failed split stops the rest, as on the device.
  const auto each_split = [&](const auto& launch) {
    for_each_split(order, tile_masks, splits, n_out, tiles, words,
                   [&](const int32_t* split_order, const int32_t* masks, bool assign, bool last) {
                     if (failure.empty()) failure = launch(split_order, masks, assign, last);
                   });
  };
  if (kernel == kSimt) {
    if (scale != nullptr || residual != nullptr || relu || weight_transposed) {
      return "the SIMT kernel has no epilogue and reads a contiguous weight";
    }
    each_split([&](const int32_t* split_order, const int32_t* masks, bool assign, bool) {
      return emulation::launch(simt::grid(tiles, C_out), simt::block(), &simt::implicit_kernel<T, Acc>, f, C_in,
                               neighbors, K, split_order, masks, words, n_out, tile_rows, w, C_out, assign,
                               static_cast<Acc*>(out));
    });
  } else if constexpr (std::is_same_v<Acc, float> && !std::is_same_v<T, double>) {
    if (kernel == kFmaTile && !std::is_same_v<T, float>) return "the FMA tiles are for float32";
    const auto tiled_kernel = tiled::kernel_for<T>(C_out, kernel == kTensorCore);
    std::vector<float> sums;  // the float buffer of several splits; float32 sums in out itself
    if (splits > 1 && !std::is_same_v<T, float>) sums.assign(size_t(n_out * C_out), std::nanf(""));
    float* acc = std::is_same_v<T, float> ? static_cast<float*>(out) : sums.empty() ? nullptr : sums.data();
    const Epilogue<T> epilogue{scale, shift, static_cast<const T*>(residual), relu};
    each_split([&](const int32_t* split_order, const int32_t* masks, bool assign, bool last) {
      return emulation::launch(tiled::grid(tiles, C_out), dim3(tiled::kThreadsPerBlock), tiled_kernel, f, C_in,
                               neighbors, K, split_order, masks, words, n_out, tile_rows, w, C_out, assign, last,
                               acc, static_cast<T*>(out), weight_transposed, epilogue);
    });
  } else {
    return "no tiled kernel for this type";
  }
  return failure;
}

// grad_weight [K, C_in, C_out] in T: partial sums of tiles_per_chunk tiles per block, then their sum.
template <typename T, typename Acc>
std::string run_weight_grad(int kernel, const void* feats, int64_t C_in, const void* grad_out, int64_t C_out,
                            const int32_t* neighbors, int64_t K, const int32_t* order, const int32_t* tile_masks,
                            int64_t splits, int64_t words, int64_t n_out, int64_t tile_rows, int64_t tiles,
                            int64_t tiles_per_chunk, void* grad_weight) {
  namespace wg = weight_grad;
  const T* f = static_cast<const T*>(feats);
  const T* g = static_cast<const T*>(grad_out);
  const int64_t chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk, size = K * C_in * C_out;
  // NaN where no block writes: every entry must be.
  std::vector<Acc> partial(size_t(chunks * size), std::numeric_limits<Acc>::quiet_NaN());
  std::string failure;
  if (kernel == kSimt) {
    failure = emulation::launch(wg::simt::grid(chunks, K, C_in, C_out), wg::simt::block(),
                                &wg::simt::weight_grad_kernel<T, Acc>, f, C_in, g, C_out, neighbors, K, order,
                                tile_masks, splits, words, n_out, tile_rows, tiles, tiles_per_chunk, partial.data());
  } else if constexpr (std::is_same_v<Acc, float> && !std::is_same_v<T, double>) {
    if (kernel == kFmaTile && !std::is_same_v<T, float>) return "the FMA tiles are for float32";
    failure = emulation::launch(wg::tiled::grid(chunks, K, C_in, C_out), dim3(wg::tiled::kThreadsPerBlock),
                                wg::tiled::kernel_for<T>(C_out, kernel == kTensorCore), f, C_in, g, C_out, neighbors,
                                K, order, tile_masks, splits, words, n_out, tile_rows, tiles, tiles_per_chunk,
                                partial.data());
  } else {
    return "no tiled kernel for this type";
  }
  if (!failure.empty()) return failure;
  return emulation::launch(wg::sum_grid(size), dim3(wg::kSumThreads), &wg::sum_partials_kernel<Acc, T>,
                           static_cast<const Acc*>(partial.data()), chunks, size, static_cast<T*>(grad_weight));
}

template <typename Call>
std::string by_dtype(int dtype, const Call& call) {
  switch (dtype) {
    case kFloat32: return call(float(), float());
    case kFloat16: return call(c10::Half(), float());
    case kBFloat16: return call(c10::BFloat16(), float());
    case kFloat64: return call(double(), double());
    default: return "unknown dtype";
  }
}

int report(const std::string& failure, char* error, int64_t error_size) {
  std::strncpy(error, failure.c_str(), size_t(error_size - 1));
  error[error_size - 1] = '\0';
  return failure.empty() ? 0 : 1;
}

}  // namespace

// grad_weight: [K, C_in, C_out] in the inputs' dtype. Returns 0, or 1 with the failed kernel
// assertion (or an unsupported combination) in error.
extern "C" int ps_emulated_weight_grad(int kernel, int dtype, const void* feats, int64_t C_in, const void* grad_out,
                                       int64_t C_out, const int32_t* neighbors, int64_t K, const int32_t* order,
                                       const int32_t* tile_masks, int64_t splits, int64_t words, int64_t n_out,
                                       int64_t tile_rows, int64_t tiles, int64_t tiles_per_chunk, void* grad_weight,
                                       char* error, int64_t error_size) {
  return report(by_dtype(dtype, [&](auto element, auto accumulator) {
                  return run_weight_grad<decltype(element), decltype(accumulator)>(
                      kernel, feats, C_in, grad_out, C_out, neighbors, K, order, tile_masks, splits, words, n_out,
                      tile_rows, tiles, tiles_per_chunk, grad_weight);
                }),
                error, error_size);
}

// out: [n_out, C_out], float32 (float64 for float64 inputs) for the SIMT kernel, the inputs' dtype for
// the tiled ones; scale / shift float [C_out] and residual [n_out, C_out] in the inputs' dtype (or null)
// and relu: the tiled kernels' epilogue; weight_transposed: weight stored [K, C_out, C_in]. Returns 0,
// or 1 with the failed kernel assertion (or an unsupported combination) in error.
extern "C" int ps_emulated_implicit(int kernel, int dtype, const void* feats, int64_t C_in, const int32_t* neighbors,
                                    int64_t K, const int32_t* order, const int32_t* tile_masks, int64_t words,
                                    int64_t n_out, int64_t tile_rows, int64_t tiles, int64_t splits,
                                    const void* weight, int64_t C_out, void* acc, const float* scale, const float* shift,
                                    const void* residual, int relu, int weight_transposed, char* error,
                                    int64_t error_size) {
  const auto call = [&](auto element, auto accumulator) {
    using T = decltype(element);
    using Acc = decltype(accumulator);
    return run<T, Acc>(kernel, feats, C_in, neighbors, K, order, tile_masks, words, n_out, tile_rows, tiles, splits,
                       weight, C_out, acc, scale, shift, residual, relu != 0, weight_transposed != 0);
  };
  return report(by_dtype(dtype, call), error, error_size);
}
