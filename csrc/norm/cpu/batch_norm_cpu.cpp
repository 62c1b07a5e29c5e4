// Batch normalisation with an optional ReLU over features [N, C] (rows = voxels), on the CPU, in
// as few passes over [N, C] as the maths allows: statistics (one read), normalise + ReLU (one read,
// one write), and in the backward the two reductions (one read of grad and x) and the input
// gradient (one read of each, one write). The ReLU is never a pass of its own: its mask is
// recomputed from x. Sums run over fixed blocks of rows (in the features' dtype within a block, in
// double across blocks, added in block order): results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../norm_checks.h"

namespace pointsparse {

#include "../affine_rows.inc"

void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2, name, " must be [N, C], got ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", x.scalar_type());
}

void check_channel_vector(const at::Tensor& v, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == x.size(1), name, " must be [C = ", x.size(1), "], got ",
                    v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == x.scalar_type(), name, " must have the features' dtype ",
                   x.scalar_type(), ", got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.is_contiguous() && v.device() == x.device(), name, " must be contiguous on ", x.device());
}

void check_affine_operands(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                           const std::optional<at::Tensor>& residual) {
  check_features(x, "x");
  check_channel_vector(scale, x, "scale");
  check_channel_vector(shift, x, "shift");
  if (residual) {
    check_features(*residual, "residual");
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes(), "residual ", residual->sizes(), " and x ", x.sizes(),
                      " differ");
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(), "residual and x dtypes differ");
  }
}

namespace {

constexpr int64_t kBlockRows = 512;  // rows per partial sum: fixed, so the summation order is too

// Sums over rows of per-row contributions to `width` columns: each block of kBlockRows rows sums
// into a local buffer in the features' dtype (vectorisable), blocks are then added in double in
// block order. accumulate(i, acc) adds row i's contributions to acc [width].
template <typename scalar_t, typename F>
std::vector<double> column_sums(int64_t N, int64_t width, F&& accumulate) {
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(static_cast<size_t>(blocks * width), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> local(static_cast<size_t>(width));
    for (int64_t b = begin; b < end; ++b) {
      std::fill(local.begin(), local.end(), scalar_t(0));
      const int64_t lo = b * kBlockRows, hi = std::min(N, lo + kBlockRows);
      for (int64_t i = lo; i < hi; ++i) accumulate(i, local.data());
      double* acc = partial.data() + b * width;
      for (int64_t j = 0; j < width; ++j) acc[j] = local[j];
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    const double* acc = partial.data() + b * width;
    for (int64_t j = 0; j < width; ++j) total[j] += acc[j];
  }
  return total;
}

// x [N, C] -> (mean [C], biased variance [C]) in x's dtype; two passes over the block sums (the
// shifted second moment keeps the variance accurate for large means).
std::tuple<at::Tensor, at::Tensor> channel_moments_cpu(const at::Tensor& x) {
  check_features(x, "x");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK_VALUE(N > 0, "batch norm needs at least one row");
  at::Tensor mean = at::empty({C}, x.options()), var = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_moments_cpu", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    const std::vector<double> sums = column_sums<scalar_t>(N, C, [&](int64_t i, scalar_t* __restrict__ acc) {
      const scalar_t* __restrict__ row = p + i * C;
      for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
    });
    std::vector<scalar_t> mu(C);
    for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<scalar_t>(sums[c] / N);
    const scalar_t* centre = mu.data();
    const std::vector<double> squares = column_sums<scalar_t>(N, C, [&](int64_t i, scalar_t* __restrict__ acc) {
      const scalar_t* __restrict__ row = p + i * C;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t d = row[c] - centre[c];
        acc[c] += d * d;
      }
    });
    scalar_t* m = mean.data_ptr<scalar_t>();
    scalar_t* v = var.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      m[c] = static_cast<scalar_t>(sums[c] / N);
      v[c] = static_cast<scalar_t>(squares[c] / N);
    }
  });
  return {mean, var};
}

// y = x * scale + shift per channel (+ residual [N, C] when given), then max(y, 0) when relu: one
// pass. With a residual it is a residual block's last batch norm, addition and ReLU in eval mode.
at::Tensor affine_relu_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, bool relu,
                           const std::optional<at::Tensor>& residual) {
  check_affine_operands(x, scale, shift, residual);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_relu_cpu", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    const scalar_t* r = residual ? residual->data_ptr<scalar_t>() : nullptr;
    const scalar_t* a = scale.data_ptr<scalar_t>();
    const scalar_t* b = shift.data_ptr<scalar_t>();
    scalar_t* q = y.data_ptr<scalar_t>();
    at::parallel_for(0, N, kBlockRows, [&](int64_t begin, int64_t end) {
      affine_relu_rows(p + begin * C, q + begin * C, end - begin, C, a, b, r ? r + begin * C : nullptr, relu);
    });
  });
  return y;
}

// Row kernels of the backward on GCC/Clang vector extensions (16-byte vectors: SSE2 on x86-64,
// NEON on aarch64). Written out because the auto-vectoriser kept the ReLU mask's select a branch:
// ~10x slower, and data-dependent. The ReLU mask is recomputed from x: a compare gives all-ones or
// zero lanes, and-ed with the gradient's bits.
template <typename scalar_t>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float vec __attribute__((vector_size(16)));
  typedef int32_t mask __attribute__((vector_size(16)));
};
template <>
struct Lanes<double> {
  typedef double vec __attribute__((vector_size(16)));
  typedef int64_t mask __attribute__((vector_size(16)));
};

template <typename V>
V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
void store(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <bool Relu, typename scalar_t>
scalar_t relu_gated(scalar_t g, scalar_t pre) {
  if constexpr (Relu) {
    return pre > scalar_t(0) ? g : scalar_t(0);
  } else {
    return g;
  }
}

template <bool Relu, typename scalar_t>
typename Lanes<scalar_t>::vec relu_gated(typename Lanes<scalar_t>::vec g, typename Lanes<scalar_t>::vec pre) {
  using V = typename Lanes<scalar_t>::vec;
  using M = typename Lanes<scalar_t>::mask;
  if constexpr (Relu) {
    const V zero = {};
    return (V)((M)g & (M)(pre > zero));
  } else {
    return g;
  }
}

// xhat = (x - mean) * invstd and the gradient through the ReLU, g * [xhat * w + b > 0]: the part
// both backward passes share, for vectors (T = Lanes::vec) and for the scalar tail (T = scalar_t).
template <bool Relu, typename scalar_t, typename T>
std::pair<T, T> normalised_and_gated(T g, T x, T mu, T is, T w, T b) {
  const T xhat = (x - mu) * is;
  return {xhat, relu_gated<Relu, scalar_t>(g, xhat * w + b)};
}

template <bool Relu, typename scalar_t>
void backward_sums_row(int64_t C, const scalar_t* g, const scalar_t* x, const scalar_t* mu, const scalar_t* is,
                       const scalar_t* w, const scalar_t* b, scalar_t* sg, scalar_t* sgx) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    const auto [xhat, gm] = normalised_and_gated<Relu, scalar_t>(load<V>(g + c), load<V>(x + c), load<V>(mu + c),
                                                                 load<V>(is + c), load<V>(w + c), load<V>(b + c));
    store(sg + c, load<V>(sg + c) + gm);
    store(sgx + c, load<V>(sgx + c) + gm * xhat);
  }
  for (; c < C; ++c) {
    const auto [xhat, gm] = normalised_and_gated<Relu, scalar_t>(g[c], x[c], mu[c], is[c], w[c], b[c]);
    sg[c] += gm;
    sgx[c] += gm * xhat;
  }
}

template <bool Relu, typename scalar_t>
void backward_input_row(int64_t C, const scalar_t* g, const scalar_t* x, const scalar_t* mu, const scalar_t* is,
                        const scalar_t* w, const scalar_t* b, const scalar_t* factor, const scalar_t* mean_g,
                        const scalar_t* mean_gx, scalar_t* dx) {
  using V = typename Lanes<scalar_t>::vec;
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    const auto [xhat, gm] = normalised_and_gated<Relu, scalar_t>(load<V>(g + c), load<V>(x + c), load<V>(mu + c),
                                                                 load<V>(is + c), load<V>(w + c), load<V>(b + c));
    store(dx + c, load<V>(factor + c) * (gm - load<V>(mean_g + c) - xhat * load<V>(mean_gx + c)));
  }
  for (; c < C; ++c) {
    const auto [xhat, gm] = normalised_and_gated<Relu, scalar_t>(g[c], x[c], mu[c], is[c], w[c], b[c]);
    dx[c] = factor[c] * (gm - mean_g[c] - xhat * mean_gx[c]);
  }
}

// Gradients of y = relu?((x - mean) * invstd * weight + bias) with batch statistics:
// g' = grad * [y > 0]; dbias = sum g'; dweight = sum g' * xhat;
// dx = weight * invstd * (g' - dbias / N - xhat * dweight / N).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
    const at::Tensor& weight, const at::Tensor& bias, bool relu) {
  check_features(grad, "grad");
  check_features(x, "x");
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), "grad ", grad.sizes(), " and x ", x.sizes(), " differ");
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), "grad and x dtypes differ");
  for (const auto& [v, name] : {std::pair{mean, "mean"}, {invstd, "invstd"}, {weight, "weight"}, {bias, "bias"}}) {
    check_channel_vector(v, x, name);
  }
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor dx = at::empty_like(x), dweight = at::empty({C}, x.options()), dbias = at::empty({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_relu_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* p = x.data_ptr<scalar_t>();
    const scalar_t* mean_p = mean.data_ptr<scalar_t>();
    const scalar_t* invstd_p = invstd.data_ptr<scalar_t>();
    const scalar_t* weight_p = weight.data_ptr<scalar_t>();
    const scalar_t* bias_p = bias.data_ptr<scalar_t>();
    // One instantiation per ReLU choice.
    auto run = [&](auto relu_tag) {
      constexpr bool kRelu = decltype(relu_tag)::value;
      // acc[c] = sum g', acc[C + c] = sum g' * xhat.
      const std::vector<double> sums = column_sums<scalar_t>(N, 2 * C, [&](int64_t i, scalar_t* acc) {
        backward_sums_row<kRelu, scalar_t>(C, g + i * C, p + i * C, mean_p, invstd_p, weight_p, bias_p, acc,
                                           acc + C);
      });
      std::vector<scalar_t> mean_g(C), mean_gx(C), factor(C);
      scalar_t* dw = dweight.data_ptr<scalar_t>();
      scalar_t* db = dbias.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        db[c] = static_cast<scalar_t>(sums[c]);
        dw[c] = static_cast<scalar_t>(sums[C + c]);
        mean_g[c] = static_cast<scalar_t>(sums[c] / N);
        mean_gx[c] = static_cast<scalar_t>(sums[C + c] / N);
        factor[c] = weight_p[c] * invstd_p[c];
      }
      scalar_t* d = dx.data_ptr<scalar_t>();
      at::parallel_for(0, N, kBlockRows, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          backward_input_row<kRelu, scalar_t>(C, g + i * C, p + i * C, mean_p, invstd_p, weight_p, bias_p,
                                              factor.data(), mean_g.data(), mean_gx.data(), d + i * C);
        }
      });
    };
    if (relu) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("channel_moments", &channel_moments_cpu);
  m.impl("affine_relu", &affine_relu_cpu);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward_cpu);
}

}  // namespace pointsparse
