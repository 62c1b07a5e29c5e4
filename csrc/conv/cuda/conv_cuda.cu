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
#include <mma.h>
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

// Block (tile t, 32 output columns); its 8 thread rows walk the tile's rows. weight [K, C_in, C_out]
// contiguous; acc [N_out, C_out] in Acc, assigned by the first split, added to by the others.
template <typename T, typename Acc>
__global__ void implicit_kernel(const T* feats, int64_t C_in, const int32_t* neighbors, int64_t K,
                                const int32_t* order, const int32_t* masks, int64_t words, int64_t n_out,
                                int64_t tile_rows, const T* weight, int64_t C_out, bool assign, Acc* acc) {
  const int64_t t = blockIdx.x, col = blockIdx.y * int64_t(kChannelThreads) + threadIdx.x;
  if (col >= C_out) return;
  const int32_t* mask = masks + t * words;
  const int64_t begin = t * tile_rows, rows = min(tile_rows, n_out - begin);
  for (int64_t r = threadIdx.y; r < rows; r += kRowsPerBlock) {
    const int32_t o = order[begin + r];
    CUDA_KERNEL_ASSERT(row_in_range(o, n_out));
    const int32_t* nb_row = neighbors + int64_t(o) * K;
    const Acc sum = implicit_dot_element<T, Acc>(feats, C_in, nb_row, mask, words, K, weight, C_out, col);
    Acc* dst = acc + int64_t(o) * C_out + col;
    *dst = assign ? sum : *dst + sum;
  }
}

// Tensor cores (WMMA, sm_80+) for half / bfloat16, and TF32 for float32 when torch allows it
// (torch.backends.cuda.matmul.allow_tf32, as for cuBLAS): a block of 4 warps takes 32 rows of one
// reorder tile x 32 output columns, each warp one 16 x 16 fragment with float accumulators held
// across every offset of the tile's mask. Per (offset, kDepth input channels) the tile's neighbour
// rows (zero where absent or past C_in) and the weight block are staged in shared memory (float32:
// by cp.async, zero-filled in flight). Any channel count: partial blocks are zero-padded when staged
// and masked when stored.
namespace tensor_core {

constexpr int kRows = 32, kCols = 32, kThreadsPerBlock = 128;

// Per element type: what shared memory holds, what the fragments take, and the k of the MMA shape.
template <typename T>
struct Wmma;
template <>
struct Wmma<c10::Half> {
  using type = __half;
  using fragment = __half;
  static constexpr int kDepth = 16;
  static __device__ type zero() { return __float2half(0.f); }
};
template <>
struct Wmma<c10::BFloat16> {
  using type = __nv_bfloat16;
  using fragment = __nv_bfloat16;
  static constexpr int kDepth = 16;
  static __device__ type zero() { return __float2bfloat16(0.f); }
};
template <>
struct Wmma<float> {
  using type = float;
  using fragment = nvcuda::wmma::precision::tf32;
  static constexpr int kDepth = 8;
  static __device__ type zero() { return 0.f; }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// dst = valid ? *src : 0 for one element in shared memory: float32 through cp.async (4 bytes, zero
// filled when the source size is 0), 2-byte types by a plain load.
template <typename W>
__device__ inline void stage(W* dst, const W* src, bool valid, W zero) {
  if constexpr (sizeof(W) == 4) {
    const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared), "l"(src), "r"(valid ? 4 : 0));
  } else {
    *dst = valid ? *src : zero;
  }
}

template <typename W>
__device__ inline void staged() {
  if constexpr (sizeof(W) == 4) asm volatile("cp.async.wait_all;\n" ::);
}
#endif

template <typename T>
__global__ void implicit_kernel(const T* feats_, int64_t C_in, const int32_t* neighbors, int64_t K, const int32_t* order,
                                const int32_t* masks, int64_t words, int64_t n_out, int64_t tile_rows, const T* weight_,
                                int64_t C_out, bool assign, float* acc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using W = typename Wmma<T>::type;
  using F = typename Wmma<T>::fragment;
  constexpr int kDepth = Wmma<T>::kDepth;
  const W* feats = reinterpret_cast<const W*>(feats_);
  const W* weight = reinterpret_cast<const W*>(weight_);
  const W zero = Wmma<T>::zero();
  // WMMA loads and stores need 256-bit aligned pointers.
  __shared__ __align__(32) W a_s[kRows * kDepth];
  __shared__ __align__(32) W b_s[kDepth * kCols];
  __shared__ __align__(32) float c_s[kRows * kCols];
  __shared__ int32_t rows_s[kRows];
  const int64_t t = blockIdx.x, col0 = int64_t(blockIdx.y) * kCols;
  const int warp = threadIdx.x / 32, warp_row = warp / 2, warp_col = warp % 2;
  const int32_t* mask = masks + t * words;
  const int64_t tile_begin = t * tile_rows, tile_end = min(tile_begin + tile_rows, n_out);
  for (int64_t chunk = tile_begin; chunk < tile_end; chunk += kRows) {
    if (threadIdx.x < kRows) {
      const int32_t o = chunk + threadIdx.x < tile_end ? order[chunk + threadIdx.x] : -1;
      CUDA_KERNEL_ASSERT(o < 0 || row_in_range(o, n_out));
      rows_s[threadIdx.x] = o;
    }
    __syncthreads();
    wmma::fragment<wmma::accumulator, 16, 16, kDepth, float> c_frag;
    wmma::fill_fragment(c_frag, 0.f);
    for (int64_t w = 0; w < words; ++w) {  // the mask is the same for the whole block
      for (uint32_t bits = uint32_t(mask[w]); bits; bits &= bits - 1) {
        const int64_t k = 32 * w + lowest_bit(bits);
        if (k >= K) break;
        for (int64_t c0 = 0; c0 < C_in; c0 += kDepth) {
          for (int e = threadIdx.x; e < kRows * kDepth; e += kThreadsPerBlock) {
            const int r = e / kDepth, c = e % kDepth;
            const int32_t o = rows_s[r];
            const int32_t i = o >= 0 ? neighbors[int64_t(o) * K + k] : -1;
            const bool valid = i >= 0 && c0 + c < C_in;
            stage(a_s + e, valid ? feats + int64_t(i) * C_in + c0 + c : feats, valid, zero);
          }
          for (int e = threadIdx.x; e < kDepth * kCols; e += kThreadsPerBlock) {
            const int c = e / kCols, j = e % kCols;
            const bool valid = c0 + c < C_in && col0 + j < C_out;
            stage(b_s + e, valid ? weight + (k * C_in + c0 + c) * C_out + col0 + j : weight, valid, zero);
          }
          staged<W>();
          __syncthreads();
          wmma::fragment<wmma::matrix_a, 16, 16, kDepth, F, wmma::row_major> a_frag;
          wmma::fragment<wmma::matrix_b, 16, 16, kDepth, F, wmma::row_major> b_frag;
          wmma::load_matrix_sync(a_frag, a_s + warp_row * 16 * kDepth, kDepth);
          wmma::load_matrix_sync(b_frag, b_s + warp_col * 16, kCols);
          if constexpr (sizeof(W) == 4) {  // float32 in, rounded to TF32 for the MMA
            for (int q = 0; q < a_frag.num_elements; ++q) a_frag.x[q] = wmma::__float_to_tf32(a_frag.x[q]);
            for (int q = 0; q < b_frag.num_elements; ++q) b_frag.x[q] = wmma::__float_to_tf32(b_frag.x[q]);
          }
          wmma::mma_sync(c_frag, a_frag, b_frag, c_frag);
          __syncthreads();
        }
      }
    }
    wmma::store_matrix_sync(c_s + warp_row * 16 * kCols + warp_col * 16, c_frag, kCols, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < kRows * kCols; e += kThreadsPerBlock) {
      const int r = e / kCols, j = e % kCols;
      const int32_t o = rows_s[r];
      if (o < 0 || col0 + j >= C_out) continue;
      float* dst = acc + int64_t(o) * C_out + col0 + j;
      *dst = assign ? c_s[e] : *dst + c_s[e];
    }
    __syncthreads();
  }
#else
  CUDA_KERNEL_ASSERT(false && "the tensor-core implicit GEMM needs sm_80 or newer");
#endif
}

}  // namespace tensor_core

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

// Splits run in order (the first assigns), each one launch over its tiles; half / bfloat16 sum in a
// float32 buffer across splits and round once, on tensor cores from sm_80 (else, and for float32 /
// float64, the SIMT kernel). Neighbour rows are asserted in range per element.
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
    const bool tensor_cores = (at::isReducedFloatingType(dtype) ||
                               (dtype == at::kFloat && at::globalContext().allowTF32CuBLAS())) &&
                              at::cuda::getCurrentDeviceProperties()->major >= 8;
    if (tensor_cores) {
      const dim3 grid(unsigned(in.tiles), unsigned((C_out + tensor_core::kCols - 1) / tensor_core::kCols));
      const auto run = [&](auto element) {
        using scalar_t = decltype(element);
        for (int64_t split = 0; split < in.splits; ++split) {
          tensor_core::implicit_kernel<<<grid, tensor_core::kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              in.feats.data_ptr<scalar_t>(), C_in, nbr, K, in.order.data_ptr<int32_t>() + split * n_out,
              in.tile_masks.data_ptr<int32_t>() + split * in.tiles * in.words, in.words, n_out, tile_rows,
              weight.data_ptr<scalar_t>(), C_out, split == 0, acc.data_ptr<float>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      };
      if (dtype == at::kFloat) {
        run(float());
      } else if (dtype == at::kHalf) {
        run(c10::Half());
      } else {
        run(c10::BFloat16());
      }
    } else {
      const dim3 grid(unsigned(in.tiles), unsigned((C_out + kChannelThreads - 1) / kChannelThreads));
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.feats.scalar_type(), "conv_implicit_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        for (int64_t split = 0; split < in.splits; ++split) {
          implicit_kernel<<<grid, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
              in.feats.data_ptr<scalar_t>(), C_in, nbr, K, in.order.data_ptr<int32_t>() + split * n_out,
              in.tile_masks.data_ptr<int32_t>() + split * in.tiles * in.words, in.words, n_out, tile_rows,
              weight.data_ptr<scalar_t>(), C_out, split == 0, acc.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
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
  m.impl("conv_gather_scatter", &conv_gather_scatter_cuda);
  m.impl("conv_weight_grad", &conv_weight_grad_cuda);
  m.impl("conv_grouped", &conv_grouped_cuda);
  m.impl("conv_grouped_weight_grad", &conv_grouped_weight_grad_cuda);
}

}  // namespace pointsparse
