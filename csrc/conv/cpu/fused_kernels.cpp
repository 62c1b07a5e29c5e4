// The fused kernels (conv_fused_kernels.inc, with the batch-norm rows of affine_rows.inc) compiled
// once per vector ISA, each variant in its own namespace under its target pragma, and the choice
// among them at run time (fused_kernels.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fused_kernels.h"

namespace pointsparse {

constexpr int64_t kPrefetchTiles = 2;  // how many tiles ahead the forward kernel fetches rows
constexpr int64_t kPrefetchOffsets = 3;  // how many offsets ahead the implicit GEMM fetches rows

// The AVX-512 and AVX2 variants exist on x86-64 only; elsewhere (aarch64) the baseline kernel,
// plain GCC vectors of 16 bytes, is the one variant.
#if defined(__x86_64__) || defined(__i386__)
#define POINTSPARSE_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
namespace fused_avx512 {
constexpr int kVectorBytes = 64;
constexpr int kMaxTileVecs = 4, kAccumulators = 24;  // of 32 vector registers
#define POINTSPARSE_MAX_TILE_VECS 4
#include "conv_fused_kernels.inc"
#include "../../norm/affine_rows.inc"
#undef POINTSPARSE_MAX_TILE_VECS
}  // namespace fused_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace fused_avx2 {
constexpr int kVectorBytes = 32;
constexpr int kMaxTileVecs = 2, kAccumulators = 12;  // of 16 vector registers
#define POINTSPARSE_MAX_TILE_VECS 2
#include "conv_fused_kernels.inc"
#include "../../norm/affine_rows.inc"
#undef POINTSPARSE_MAX_TILE_VECS
}  // namespace fused_avx2
#pragma GCC pop_options

#endif

namespace fused_baseline {
constexpr int kVectorBytes = 16;
constexpr int kMaxTileVecs = 2, kAccumulators = 12;  // of 16 vector registers
#define POINTSPARSE_MAX_TILE_VECS 2
#include "conv_fused_kernels.inc"
#include "../../norm/affine_rows.inc"
#undef POINTSPARSE_MAX_TILE_VECS
}  // namespace fused_baseline

namespace {

int vector_bytes(Isa isa) { return isa == Isa::kAvx512 ? 64 : isa == Isa::kAvx2 ? 32 : 16; }

}  // namespace

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

template <typename T>
FusedKernels<T> fused_kernels(Isa isa) {
  switch (isa) {
#ifdef POINTSPARSE_X86
    case Isa::kAvx512:
      return {&fused_avx512::forward_pairs<T, true>, &fused_avx512::forward_pairs<T, false>,
              &fused_avx512::weight_grad_pairs<T>,
              &fused_avx512::implicit_rows<T, true>, &fused_avx512::implicit_rows<T, false>,
              &fused_avx512::affine_relu_rows<T>};
    case Isa::kAvx2:
      return {&fused_avx2::forward_pairs<T, true>, &fused_avx2::forward_pairs<T, false>,
              &fused_avx2::weight_grad_pairs<T>,
              &fused_avx2::implicit_rows<T, true>, &fused_avx2::implicit_rows<T, false>,
              &fused_avx2::affine_relu_rows<T>};
#endif
    default:
      return {&fused_baseline::forward_pairs<T, true>, &fused_baseline::forward_pairs<T, false>,
              &fused_baseline::weight_grad_pairs<T>,
              &fused_baseline::implicit_rows<T, true>, &fused_baseline::implicit_rows<T, false>,
              &fused_baseline::affine_relu_rows<T>};
  }
}

template FusedKernels<float> fused_kernels<float>(Isa isa);
template FusedKernels<double> fused_kernels<double>(Isa isa);

int64_t tile_cols_of(int64_t C_out, Isa isa, const at::Tensor& like) {
  return round_up(std::max<int64_t>(C_out, 1), vector_bytes(isa) / int64_t(like.element_size()) * kTileVecs);
}

// The forward kernels' weight [K, C_in, ldw] (fused and implicit GEMM): their tiles read whole
// vectors, so rows are padded with zeros to a multiple of the vector, and the weight itself serves
// when C_out already is one (every width of MinkUNet: no copy per call). (Padding rows off multiples of 512 bytes, once thought to
// spare L1 sets, measured no faster with the current tiles on 128- and 256-channel layers.)
at::Tensor vector_padded_weight(const at::Tensor& weight, Isa isa) {
  const int64_t C_out = weight.size(2), lanes = vector_bytes(isa) / int64_t(weight.element_size());
  const int64_t ldw = round_up(std::max<int64_t>(C_out, 1), lanes);
  if (ldw == C_out) return weight.contiguous();
  at::Tensor packed = at::zeros({weight.size(0), weight.size(1), ldw}, weight.options());
  packed.narrow(2, 0, C_out).copy_(weight);
  return packed;
}

// The sum over offsets stays in float32, as in the gather-GEMM-scatter dataflow.
bool runs_in_float(const at::Tensor& a, const at::Tensor& b) {
  return at::isReducedFloatingType(a.scalar_type()) && b.scalar_type() == a.scalar_type();
}

}  // namespace pointsparse
