// Register-blocked CPU convolutions, for the widest vector ISA the CPU has:
// - fused gather-GEMM-scatter (pointsparse::conv_fused and its weight gradient): the pairs and the
//   results of conv_gather_scatter without gathered copies or ATen GEMM calls;
// - implicit GEMM (pointsparse::conv_implicit): output-stationary tiles of (reordered) output rows
//   that walk the offsets their tile needs, accumulators held in registers across offsets.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "../../common/cpu_isa.h"
#include "../../common/for_each_task.h"
#include "../conv_checks.h"
#include "../../norm/norm_checks.h"

namespace pointsparse {

// Tile shape of every ISA: 6 rows x 2 vectors = 12 accumulators, within the 16 registers of AVX2.
constexpr int kTileRows = 6;
constexpr int kTileVecs = 2;
constexpr int64_t kGradChunk = 64;  // pairs gathered at once for the weight gradient (L1-sized)
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

std::string fused_cpu_isa() { return isa_name(cpu_isa()); }

int vector_bytes(Isa isa) { return isa == Isa::kAvx512 ? 64 : isa == Isa::kAvx2 ? 32 : 16; }

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

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

// Output columns padded to whole register tiles (the weight gradient's buffers, whose tiles run over
// every padded column).
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

constexpr int64_t kGradTask = 4096;     // pairs per weight-gradient task

// Half and bfloat16 run the float32 kernels on converted operands and round the result once: the
// sum over offsets stays in float32, as in the gather-GEMM-scatter dataflow.
bool runs_in_float(const at::Tensor& a, const at::Tensor& b) {
  return at::isReducedFloatingType(a.scalar_type()) && b.scalar_type() == a.scalar_type();
}

// Output rows in blocks small enough to stay in L2 while every offset adds into them: one pass
// over the output instead of one per offset. The pairs of offset k whose output row lies in block b
// are [start[k][b], start[k][b + 1]) of in_idx / out_idx, which are the map's own arrays when each
// offset's pairs come sorted by output row (forward maps) and otherwise a copy bucketed by block,
// each bucket keeping the map's order (so every row sums the same terms in the same order).
struct RowBlocks {
  int64_t rows = 0, count = 0;  // rows of a full block; blocks
  int64_t tail_start = 0, tail_rows = 0;  // from tail_start on, blocks of tail_rows rows
  std::vector<int64_t> start;  // [K][count + 1]
  at::Tensor in_idx, out_idx;  // int32 [P]
  int64_t begin(int64_t k, int64_t b) const { return start[k * (count + 1) + b]; }
  int64_t head_count() const { return tail_start / rows; }
  int64_t first_row(int64_t b, int64_t num_out) const {
    return std::min(num_out, b < head_count() ? b * rows : tail_start + (b - head_count()) * tail_rows);
  }
  int64_t block_of(int64_t row) const {
    return row < tail_start ? row / rows : head_count() + (row - tail_start) / tail_rows;
  }
};

// Output bytes per block: a quarter of the core's L2 (256 KiB of a 1 MiB L2 measured 1-4 % faster
// than 128 KiB on 96- and 256-channel layers of a LiDAR scan: fewer, longer runs of pairs per
// offset), 128 KiB where the L2 size is unknown.
int64_t block_bytes() {
  static const int64_t bytes = [] {
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return l2 > 0 ? std::max<int64_t>(64 * 1024, l2 / 4) : int64_t(128 * 1024);
  }();
  return bytes;
}

RowBlocks row_blocks(const ConvPairs& pairs, int64_t num_out, int64_t row_bytes, int64_t identity_offset) {
  RowBlocks blocks;
  const int64_t threads = at::get_num_threads();
  blocks.rows = std::max<int64_t>(16, std::min(block_bytes() / std::max<int64_t>(row_bytes, 1),
                                               (num_out + 4 * threads - 1) / (4 * threads)));
  // The last 2 * threads blocks' rows go in blocks a quarter as large, so that the threads finish
  // together (small strided and 1x1 convs: 5-10 % faster; large layers: no change).
  const int64_t R = blocks.rows;
  blocks.tail_start = std::max<int64_t>(0, num_out - 2 * threads * R) / R * R;
  blocks.tail_rows = std::max<int64_t>(16, R / 4);
  blocks.count = blocks.head_count() + (num_out - blocks.tail_start + blocks.tail_rows - 1) / blocks.tail_rows;
  const int64_t K = pairs.K, stride = blocks.count + 1;
  const int64_t* ptr = pairs.ptr();
  const int32_t* out = pairs.out_idx.data_ptr<int32_t>();
  std::vector<char> sorted(K, 1);
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      bool ascending = true;  // a local: threads writing neighbouring chars would share a cache line
      for (int64_t p = ptr[k] + 1; p < ptr[k + 1]; ++p) ascending &= out[p - 1] <= out[p];
      sorted[k] = ascending;
    }
  });
  const bool all_sorted = std::all_of(sorted.begin(), sorted.end(), [](char c) { return c != 0; });
  blocks.start.assign(K * stride, 0);
  if (all_sorted) {
    blocks.in_idx = pairs.in_idx, blocks.out_idx = pairs.out_idx;
  } else {
    blocks.in_idx = at::empty_like(pairs.in_idx), blocks.out_idx = at::empty_like(pairs.out_idx);
  }
  const int32_t* in = pairs.in_idx.data_ptr<int32_t>();
  int32_t* bin = blocks.in_idx.data_ptr<int32_t>();
  int32_t* bout = blocks.out_idx.data_ptr<int32_t>();
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t* start = blocks.start.data() + k * stride;
      if (k == identity_offset) {
        std::fill(start, start + stride, ptr[k]);  // runs separately, as an assignment
      } else if (all_sorted) {
        for (int64_t b = 0; b <= blocks.count; ++b) {
          start[b] = std::lower_bound(out + ptr[k], out + ptr[k + 1], int32_t(blocks.first_row(b, num_out))) - out;
        }
      } else {  // counting sort of the offset's pairs by block, stable
        std::vector<int64_t> fill(stride, 0);
        for (int64_t p = ptr[k]; p < ptr[k + 1]; ++p) ++fill[blocks.block_of(out[p]) + 1];
        fill[0] = ptr[k];
        for (int64_t b = 1; b < stride; ++b) fill[b] += fill[b - 1];
        std::copy(fill.begin(), fill.end(), start);
        for (int64_t p = ptr[k]; p < ptr[k + 1]; ++p) {
          const int64_t q = fill[blocks.block_of(out[p])]++;
          bin[q] = in[p], bout[q] = out[p];
        }
      }
    }
  });
  return blocks;
}

// Whether every output row has exactly one pair over all offsets (a transposed k2 s2 conv, the input
// gradient of a strided one): then each pair assigns its row, with no zero fill and no read-back.
bool covers_each_row_once(const ConvPairs& pairs, int64_t num_out, int64_t identity_offset) {
  if (identity_offset >= 0 || pairs.ptr()[pairs.K] != num_out) return false;
  std::vector<uint8_t> seen(num_out, 0);
  const int32_t* out = pairs.out_idx.data_ptr<int32_t>();
  for (int64_t p = 0; p < num_out; ++p) {
    if (seen[out[p]]++) return false;  // a second pair: some other row has none
  }
  return true;
}

// The eval-mode batch norm (scale, shift per output channel), residual and ReLU a fused conv may
// end with: each block of output rows gets it right after its last offset, while it is in L2,
// instead of a separate pass over the whole output.
struct Epilogue {
  at::Tensor scale, shift;              // [C_out]
  std::optional<at::Tensor> residual;   // [num_out, C_out]
  bool relu;
};

at::Tensor conv_fused_forward(const at::Tensor& feats_, const at::Tensor& weight, const at::Tensor& offset_ptr,
                              const at::Tensor& in_idx_, const at::Tensor& out_idx_, int64_t num_out,
                              int64_t identity_offset, const Epilogue* epilogue) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ConvPairs pairs = check_conv_forward(feats_, weight, offset_ptr, in_idx_, out_idx_, num_out,
                                             identity_offset);
  const int64_t C_in = weight.size(1), C_out = weight.size(2);
  const Isa isa = cpu_isa();
  const at::Tensor packed = vector_padded_weight(weight, isa);  // [K, C_in, ldw]
  const int64_t ldw = packed.size(2);
  // Every block assigns its rows first (the identity offset, or zeros), so no zero fill here.
  at::Tensor out = at::empty({num_out, C_out}, weight.options());
  if (epilogue) check_affine_operands(out, epilogue->scale, epilogue->shift, epilogue->residual);
  if (num_out == 0 || C_out == 0) return out;
  const RowBlocks blocks = row_blocks(pairs, num_out, C_out * int64_t(weight.element_size()), identity_offset);
  const bool assign_all = covers_each_row_once(pairs, num_out, identity_offset);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_fused_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = pairs.feats.data_ptr<scalar_t>();
    const scalar_t* w = packed.data_ptr<scalar_t>();
    const int32_t* in_idx = blocks.in_idx.data_ptr<int32_t>();
    const int32_t* out_idx = blocks.out_idx.data_ptr<int32_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* scale = epilogue ? epilogue->scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* shift = epilogue ? epilogue->shift.data_ptr<scalar_t>() : nullptr;
    const scalar_t* residual = epilogue && epilogue->residual ? epilogue->residual->data_ptr<scalar_t>() : nullptr;
    // Per row: the identity offset (or zero) first, then the other offsets in ascending order.
    for_each_task(blocks.count, [&](int64_t b) {  // blocks to free threads: rows differ in pairs
      const int64_t r0 = blocks.first_row(b, num_out), r1 = blocks.first_row(b + 1, num_out);
      if (identity_offset >= 0) {
        kernels.forward_assign(feats, C_in, nullptr, nullptr, r0, r1, w + identity_offset * C_in * ldw, ldw, o, C_out);
      } else if (!assign_all) {
        std::memset(o + r0 * C_out, 0, (r1 - r0) * C_out * sizeof(scalar_t));
      }
      const auto run = assign_all ? kernels.forward_assign : kernels.forward_add;
      for (int64_t k = 0; k < pairs.K; ++k) {
        const int64_t begin = blocks.begin(k, b), end = blocks.begin(k, b + 1);
        if (begin == end) continue;
        run(feats, C_in, in_idx, out_idx, begin, end, w + k * C_in * ldw, ldw, o, C_out);
      }
      if (epilogue) {
        kernels.epilogue(o + r0 * C_out, o + r0 * C_out, r1 - r0, C_out, scale, shift,
                         residual ? residual + r0 * C_out : nullptr, epilogue->relu);
      }
    });
  });
  return out;
}

at::Tensor conv_fused_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                          const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t num_out,
                          int64_t identity_offset) {
  if (runs_in_float(feats, weight)) {
    return conv_fused_cpu(feats.to(at::kFloat), weight.to(at::kFloat), offset_ptr, in_idx, out_idx, num_out,
                          identity_offset).to(feats.scalar_type());
  }
  return conv_fused_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset, nullptr);
}

// conv_fused, then relu?(out * scale + shift [+ residual]) per output channel (float32 / float64).
at::Tensor conv_fused_affine_relu_cpu(const at::Tensor& feats, const at::Tensor& weight, const at::Tensor& offset_ptr,
                                      const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t num_out,
                                      int64_t identity_offset, const at::Tensor& scale, const at::Tensor& shift,
                                      bool relu, const std::optional<at::Tensor>& residual) {
  const Epilogue epilogue{scale, shift, residual, relu};
  return conv_fused_forward(feats, weight, offset_ptr, in_idx, out_idx, num_out, identity_offset, &epilogue);
}

struct GradTask {
  int64_t k, begin, end;  // pairs [begin, end) of offset k; null indices for the identity offset
};

at::Tensor conv_fused_weight_grad_cpu(const at::Tensor& feats_, const at::Tensor& grad_out_,
                                      const at::Tensor& offset_ptr, const at::Tensor& in_idx_,
                                      const at::Tensor& out_idx_, int64_t identity_offset) {
  if (runs_in_float(feats_, grad_out_)) {
    return conv_fused_weight_grad_cpu(feats_.to(at::kFloat), grad_out_.to(at::kFloat), offset_ptr, in_idx_,
                                      out_idx_, identity_offset).to(feats_.scalar_type());
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor grad_out;
  const ConvPairs pairs = check_conv_weight_grad(feats_, grad_out_, offset_ptr, in_idx_, out_idx_,
                                                 identity_offset, &grad_out);
  const int64_t C_in = pairs.feats.size(1), C_out = grad_out.size(1), K = pairs.K;
  const Isa isa = cpu_isa();
  const int64_t ldi = round_up(std::max<int64_t>(C_in, 1), kTileRows);
  const int64_t ldw = tile_cols_of(C_out, isa, grad_out);
  // Tasks of at most kGradTask pairs of one offset, so the cores share equal work however the
  // offsets' pair counts vary; each task sums into its own slice, reduced per offset below.
  std::vector<GradTask> tasks;
  const int64_t* ptr = pairs.ptr();
  for (int64_t k = 0; k < K; ++k) {
    const int64_t begin = k == identity_offset ? 0 : ptr[k];
    const int64_t end = k == identity_offset ? grad_out.size(0) : ptr[k + 1];
    for (int64_t b = begin; b < end; b += kGradTask) tasks.push_back({k, b, std::min(end, b + kGradTask)});
  }
  const int64_t T = int64_t(tasks.size());
  at::Tensor partial = at::zeros({T, ldi, ldw}, grad_out.options());  // [tasks, ldi, ldw]
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "conv_fused_weight_grad_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = pairs.feats.data_ptr<scalar_t>();
    const scalar_t* grad = grad_out.data_ptr<scalar_t>();
    const int32_t* in_idx = pairs.in_idx.data_ptr<int32_t>();
    const int32_t* out_idx = pairs.out_idx.data_ptr<int32_t>();
    scalar_t* acc = partial.data_ptr<scalar_t>();
    at::parallel_for(0, T, 1, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> a(kGradChunk * ldi, 0), g(kGradChunk * ldw, 0);  // zero padding stays
      for (int64_t t = first; t < last; ++t) {
        const GradTask& task = tasks[t];
        const bool identity = task.k == identity_offset;
        kernels.weight_grad(feats, C_in, grad, C_out, identity ? nullptr : in_idx,
                            identity ? nullptr : out_idx, task.begin, task.end, ldi, ldw, a.data(),
                            g.data(), acc + t * ldi * ldw);
      }
    });
  });
  std::vector<int64_t> task_offsets(T);
  for (int64_t t = 0; t < T; ++t) task_offsets[t] = tasks[t].k;
  at::Tensor grad_weight = at::zeros({K, ldi, ldw}, grad_out.options());
  grad_weight.index_add_(0, at::tensor(task_offsets, at::kLong), partial);
  return grad_weight.narrow(1, 0, C_in).narrow(2, 0, C_out).contiguous();  // [K, C_in, C_out]
}

// Offsets whose bit is set in one tile's mask words, ascending, into `offsets` (reused across tiles).
void tile_offsets(const int32_t* words, int64_t n_words, int64_t K, std::vector<int32_t>& offsets) {
  offsets.clear();
  for (int64_t w = 0; w < n_words; ++w) {
    uint32_t bits = uint32_t(words[w]);
    while (bits) {
      const int32_t k = int32_t(32 * w + __builtin_ctz(bits));
      if (k < K) offsets.push_back(k);
      bits &= bits - 1;
    }
  }
}

// Splits run one after another (the first assigns, the others add: a fixed order of the sum); the
// tiles of one split in parallel, each output row in exactly one tile.
at::Tensor conv_implicit_cpu(const at::Tensor& feats_, const at::Tensor& weight, const at::Tensor& neighbors_,
                             const at::Tensor& order_, const at::Tensor& tile_masks_, const at::Tensor& neighbors_t,
                             const at::Tensor& order_t, const at::Tensor& tile_masks_t, const at::Tensor& offset_ptr,
                             const at::Tensor& in_idx, const at::Tensor& out_idx, int64_t tile_rows) {
  if (runs_in_float(feats_, weight)) {
    return conv_implicit_cpu(feats_.to(at::kFloat), weight.to(at::kFloat), neighbors_, order_, tile_masks_,
                             neighbors_t, order_t, tile_masks_t, offset_ptr, in_idx, out_idx, tile_rows)
        .to(feats_.scalar_type());
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ImplicitInputs in = check_conv_implicit(feats_, weight, neighbors_, order_, tile_masks_, tile_rows);
  const int64_t K = weight.size(0), C_in = weight.size(1), C_out = weight.size(2), n_out = in.neighbors.size(0);
  const Isa isa = cpu_isa();
  const at::Tensor packed = vector_padded_weight(weight, isa);  // [K, C_in, ldw]
  const int64_t ldw = packed.size(2);
  // Not zeroed: split 0 runs every tile, and each row once (order is checked to be a permutation).
  at::Tensor out = at::empty({n_out, C_out}, weight.options());
  if (n_out == 0 || C_out == 0) return out;
  const at::Tensor zero = at::zeros({std::max<int64_t>(C_in, 1)}, weight.options());  // the absent neighbour
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "conv_implicit_cpu", [&] {
    const FusedKernels<scalar_t> kernels = fused_kernels<scalar_t>(isa);
    const scalar_t* feats = in.feats.data_ptr<scalar_t>();
    const int32_t* nbr = in.neighbors.data_ptr<int32_t>();
    const int32_t* order = in.order.data_ptr<int32_t>();
    const int32_t* masks = in.tile_masks.data_ptr<int32_t>();
    for (int64_t split = 0; split < in.splits; ++split) {
      auto run = split == 0 ? kernels.implicit_assign : kernels.implicit_add;
      at::parallel_for(0, in.tiles, 1, [&](int64_t first, int64_t last) {
        std::vector<int32_t> offsets;
        offsets.reserve(K);
        for (int64_t t = first; t < last; ++t) {
          tile_offsets(masks + (split * in.tiles + t) * in.words, in.words, K, offsets);
          if (offsets.empty() && split > 0) continue;
          const int64_t begin = t * tile_rows, rows = std::min(tile_rows, n_out - begin);
          run(feats, C_in, nbr, K, order + split * n_out + begin, rows, offsets.data(), int64_t(offsets.size()),
              packed.data_ptr<scalar_t>(), ldw, zero.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C_out);
        }
      });
    }
  });
  return out;
}

// The weight gradient of the implicit GEMM, from the map's pairs: the fused kernels' (deterministic:
// fixed tasks, per-task partial sums reduced in order).
at::Tensor conv_implicit_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out,
                                         const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                                         const at::Tensor& out_idx) {
  return conv_fused_weight_grad_cpu(feats, grad_out, offset_ptr, in_idx, out_idx, -1);
}

}  // namespace

// No tensor arguments, so no dispatch key: a catch-all kernel.
TORCH_LIBRARY_FRAGMENT(pointsparse, m) {
  // The instruction set the fused CPU kernels run with now: avx512, avx2 or baseline.
  m.def("fused_cpu_isa() -> str", &fused_cpu_isa);
}

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("conv_fused", &conv_fused_cpu);
  m.impl("conv_fused_affine_relu", &conv_fused_affine_relu_cpu);
  m.impl("conv_fused_weight_grad", &conv_fused_weight_grad_cpu);
  m.impl("conv_implicit", &conv_implicit_cpu);
  m.impl("conv_implicit_weight_grad", &conv_implicit_weight_grad_cpu);
}

}  // namespace pointsparse
