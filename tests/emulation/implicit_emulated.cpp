// The implicit-GEMM CUDA kernels (csrc/conv/cuda/implicit_kernels.cuh) built for the host with the
// emulated CUDA names, behind a C entry that tests/test_implicit_kernels.py calls through ctypes. It
// launches the splits as conv_implicit_cuda does: in order, one launch each, the first assigning.
#include "async_copy.h"  // before the kernels: the CUDA names they use
#include "wmma.h"

#include "conv/cuda/implicit_kernels.cuh"

#include <cstring>

namespace {

using namespace pointsparse::implicit_gemm;

enum Kernel { kSimt = 0, kTensorCore = 1, kFmaTile = 2 };
enum DType { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

template <typename T, typename Acc>
std::string run(int kernel, const void* feats, int64_t C_in, const int32_t* neighbors, int64_t K,
                const int32_t* order, const int32_t* tile_masks, int64_t words, int64_t n_out, int64_t tile_rows,
                int64_t tiles, int64_t splits, const void* weight, int64_t C_out, void* acc) {
  const T* f = static_cast<const T*>(feats);
  const T* w = static_cast<const T*>(weight);
  std::string failure;
  // As conv_implicit_cuda launches them; a failed split stops the rest, as on the device.
  const auto each_split = [&](const auto& launch) {
    for_each_split(order, tile_masks, splits, n_out, tiles, words,
                   [&](const int32_t* split_order, const int32_t* masks, bool assign) {
                     if (failure.empty()) failure = launch(split_order, masks, assign);
                   });
  };
  if (kernel == kSimt) {
    each_split([&](const int32_t* split_order, const int32_t* masks, bool assign) {
      return emulation::launch(simt::grid(tiles, C_out), simt::block(), &simt::implicit_kernel<T, Acc>, f, C_in,
                               neighbors, K, split_order, masks, words, n_out, tile_rows, w, C_out, assign,
                               static_cast<Acc*>(acc));
    });
  } else if constexpr (std::is_same_v<Acc, float> && !std::is_same_v<T, double>) {
    if (kernel == kFmaTile && !std::is_same_v<T, float>) return "the FMA tiles are for float32";
    const auto tiled_kernel = tiled::kernel_for<T>(C_out, kernel == kTensorCore);
    each_split([&](const int32_t* split_order, const int32_t* masks, bool assign) {
      return emulation::launch(tiled::grid(tiles, C_out), dim3(tiled::kThreadsPerBlock), tiled_kernel, f, C_in,
                               neighbors, K, split_order, masks, words, n_out, tile_rows, w, C_out, assign,
                               static_cast<float*>(acc));
    });
  } else {
    return "no tiled kernel for this type";
  }
  return failure;
}

}  // namespace

// acc: float32 [n_out, C_out] (float64 for float64 inputs). Returns 0, or 1 with the failed kernel
// assertion (or an unsupported combination) in error.
extern "C" int ps_emulated_implicit(int kernel, int dtype, const void* feats, int64_t C_in, const int32_t* neighbors,
                                    int64_t K, const int32_t* order, const int32_t* tile_masks, int64_t words,
                                    int64_t n_out, int64_t tile_rows, int64_t tiles, int64_t splits,
                                    const void* weight, int64_t C_out, void* acc, char* error, int64_t error_size) {
  const auto call = [&](auto element, auto accumulator) {
    using T = decltype(element);
    using Acc = decltype(accumulator);
    return run<T, Acc>(kernel, feats, C_in, neighbors, K, order, tile_masks, words, n_out, tile_rows, tiles, splits,
                       weight, C_out, acc);
  };
  std::string failure;
  switch (dtype) {
    case kFloat32: failure = call(float(), float()); break;
    case kFloat16: failure = call(c10::Half(), float()); break;
    case kBFloat16: failure = call(c10::BFloat16(), float()); break;
    case kFloat64: failure = call(double(), double()); break;
    default: failure = "unknown dtype";
  }
  std::strncpy(error, failure.c_str(), size_t(error_size - 1));
  error[error_size - 1] = '\0';
  return failure.empty() ? 0 : 1;
}
