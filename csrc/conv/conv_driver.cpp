#include "conv_driver.h"

#include "conv_checks.h"

#include <ATen/OpMathType.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>

namespace pointsparse {
namespace {

int64_t largest_group(const int64_t* ptr, int64_t K, int64_t identity_offset) {
  int64_t largest = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (k != identity_offset) largest = std::max(largest, ptr[k + 1] - ptr[k]);
  }
  return largest;
}

}  // namespace

at::Tensor conv_forward_driver(const at::Tensor& feats_, const at::Tensor& weight,
                               const at::Tensor& offset_ptr, const at::Tensor& in_idx_,
                               const at::Tensor& out_idx_, int64_t num_out, int64_t identity_offset,
                               const RowKernels& rows) {
  // Autocast casts the inputs before the op (pointsparse/ops/conv.py); inside, every GEMM runs in
  // the dtype it is given.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ConvPairs pairs = check_conv_forward(feats_, weight, offset_ptr, in_idx_, out_idx_, num_out,
                                             identity_offset);
  const at::Tensor &feats = pairs.feats, &in_idx = pairs.in_idx, &out_idx = pairs.out_idx;
  const int64_t K = pairs.K;
  const int64_t* ptr = pairs.ptr();

  // Half / bfloat16 products of each offset are summed in float32 (acc), rounded once at the end.
  const at::ScalarType acc_type = at::toOpMathType(feats.scalar_type());
  const bool reduced = acc_type != feats.scalar_type();
  at::Tensor acc;  // [num_out, C_out] in acc_type
  if (identity_offset >= 0) {
    const at::Tensor centre = at::mm(feats, weight.select(0, identity_offset));  // [N, C_out]
    acc = reduced ? centre.to(acc_type) : centre;
  } else {
    acc = at::zeros({num_out, weight.size(2)}, feats.options().dtype(acc_type));
  }
  const int64_t largest = largest_group(ptr, K, identity_offset);
  at::Tensor gathered = at::empty({largest, feats.size(1)}, feats.options());  // [n_k, C_in] reused
  at::Tensor product = at::empty({largest, weight.size(2)}, feats.options());  // [n_k, C_out] reused
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = ptr[k + 1] - ptr[k];
    if (k == identity_offset || n == 0) continue;
    at::Tensor g = gathered.narrow(0, 0, n), r = product.narrow(0, 0, n);
    rows.gather(feats, in_idx.data_ptr<int32_t>() + ptr[k], n, g);
    at::mm_out(r, g, weight.select(0, k));  // [n_k, C_in] @ [C_in, C_out]
    rows.scatter_add(r, out_idx.data_ptr<int32_t>() + ptr[k], n, acc);
  }
  return reduced ? acc.to(feats.scalar_type()) : acc;
}

at::Tensor conv_weight_grad_driver(const at::Tensor& feats_, const at::Tensor& grad_out_,
                                   const at::Tensor& offset_ptr, const at::Tensor& in_idx_,
                                   const at::Tensor& out_idx_, int64_t identity_offset,
                                   const RowKernels& rows) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::Tensor grad_out;
  const ConvPairs pairs = check_conv_weight_grad(feats_, grad_out_, offset_ptr, in_idx_, out_idx_,
                                                 identity_offset, &grad_out);
  const at::Tensor &feats = pairs.feats, &in_idx = pairs.in_idx, &out_idx = pairs.out_idx;
  const int64_t K = pairs.K;
  const int64_t* ptr = pairs.ptr();

  at::Tensor grad_weight = at::zeros({K, feats.size(1), grad_out.size(1)}, feats.options());
  if (identity_offset >= 0) {
    at::Tensor slot = grad_weight.select(0, identity_offset);
    at::mm_out(slot, feats.t(), grad_out);  // [C_in, N] @ [N, C_out]
  }
  const int64_t largest = largest_group(ptr, K, identity_offset);
  at::Tensor gathered_in = at::empty({largest, feats.size(1)}, feats.options());
  at::Tensor gathered_out = at::empty({largest, grad_out.size(1)}, feats.options());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = ptr[k + 1] - ptr[k];
    if (k == identity_offset || n == 0) continue;
    at::Tensor a = gathered_in.narrow(0, 0, n), b = gathered_out.narrow(0, 0, n);
    rows.gather(feats, in_idx.data_ptr<int32_t>() + ptr[k], n, a);
    rows.gather(grad_out, out_idx.data_ptr<int32_t>() + ptr[k], n, b);
    at::Tensor slot = grad_weight.select(0, k);
    at::mm_out(slot, a.t(), b);  // [C_in, n_k] @ [n_k, C_out]
  }
  return grad_weight;
}

}  // namespace pointsparse
