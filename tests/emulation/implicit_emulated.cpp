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
  for (int64_t split = 0; split < splits; ++split) {
    const int32_t* split_order = order + split * n_out;
    const int32_t* split_masks = tile_masks + split * tiles * words;
    std::string failure;
    if (kernel == kTensorCore || kernel == kFmaTile) {
      if constexpr (std::is_same_v<Acc, float> && !std::is_same_v<T, double>) {
        const int columns = tiled::block_columns(C_out);
        const dim3 grid(unsigned(tiles), unsigned((C_out + columns - 1) / columns));
        auto tiled = columns == 64 ? &tiled::implicit_kernel<T, 64> : &tiled::implicit_kernel<T, 32>;
        if constexpr (std::is_same_v<T, float>) {
          if (kernel == kFmaTile) {
            tiled = columns == 64 ? &tiled::implicit_kernel<T, 64, false>
                                  : &tiled::implicit_kernel<T, 32, false>;
          }
        } else if (kernel == kFmaTile) {
          return "the FMA tiles are for float32";
        }
        failure = emulation::launch(grid, dim3(tiled::kThreadsPerBlock), tiled, f, C_in, neighbors, K,
                                    split_order, split_masks, words, n_out, tile_rows, w, C_out, split == 0,
                                    static_cast<float*>(acc));
      } else {
        return "no tiled kernel for this type";
      }
    } else {
      const dim3 grid(unsigned(tiles), unsigned((C_out + simt::kChannelThreads - 1) / simt::kChannelThreads));
      const dim3 block(simt::kChannelThreads, simt::kRowsPerBlock);
      failure = emulation::launch(grid, block, &simt::implicit_kernel<T, Acc>, f, C_in, neighbors, K, split_order,
                                  split_masks, words, n_out, tile_rows, w, C_out, split == 0, static_cast<Acc*>(acc));
    }
    if (!failure.empty()) return failure;
  }
  return "";
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
