// The register-blocked CPU kernels of the fused and implicit-GEMM dataflows: one variant per vector
// ISA (fused_kernels.cpp compiles conv_fused_kernels.inc once for each), picked at run time, and the
// weight layout their tiles read.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../../common/cpu_isa.h"

namespace pointsparse {

// Tile shape of every ISA: 6 rows x 2 vectors = 12 accumulators, within the 16 registers of AVX2.
constexpr int kTileRows = 6;
constexpr int kTileVecs = 2;
constexpr int64_t kGradChunk = 64;  // pairs gathered at once for the weight gradient (L1-sized)

template <typename T>
struct FusedKernels {
  void (*forward_assign)(const T*, int64_t, const int32_t*, const int32_t*, int64_t, int64_t, const T*,
                         int64_t, T*, int64_t);
  void (*forward_add)(const T*, int64_t, const int32_t*, const int32_t*, int64_t, int64_t, const T*,
                      int64_t, T*, int64_t);
  void (*weight_grad)(const T*, int64_t, const T*, int64_t, const int32_t*, const int32_t*, int64_t,
                      int64_t, int64_t, int64_t, T*, T*, T*);
  void (*implicit_assign)(const T*, int64_t, const int32_t*, int64_t, const int32_t*, int64_t, const int32_t*,
                          int64_t, const T*, int64_t, const T*, T*, int64_t);
  void (*implicit_add)(const T*, int64_t, const int32_t*, int64_t, const int32_t*, int64_t, const int32_t*,
                       int64_t, const T*, int64_t, const T*, T*, int64_t);
  void (*epilogue)(const T*, T*, int64_t, int64_t, const T*, const T*, const T*, bool);
};

// The kernels of isa, for float and double.
template <typename T>
FusedKernels<T> fused_kernels(Isa isa);

int64_t round_up(int64_t value, int64_t multiple);

// Output columns padded to whole register tiles (the weight gradient's buffers, whose tiles run over
// every padded column).
int64_t tile_cols_of(int64_t C_out, Isa isa, const at::Tensor& like);

// The forward kernels' weight [K, C_in, ldw] (fused and implicit GEMM), rows padded with zeros to a
// multiple of the vector; the weight itself when C_out already is one.
at::Tensor vector_padded_weight(const at::Tensor& weight, Isa isa);

// Half and bfloat16 run the float32 kernels on converted operands and round the result once.
bool runs_in_float(const at::Tensor& a, const at::Tensor& b);

// The fused conv's weight gradient, from the map's pairs (also the implicit GEMM's).
at::Tensor conv_fused_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out,
                                      const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                      const at::Tensor& out_idx, int64_t identity_offset);

}  // namespace pointsparse
