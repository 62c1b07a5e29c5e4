#include "conv_driver.h"

#include <algorithm>

namespace pointsparse {
namespace {

void check_pairs(const at::Tensor& feats, const at::Tensor& offset_ptr, const at::Tensor& in_idx,
                 const at::Tensor& out_idx, int64_t K, int64_t identity_offset) {
  TORCH_CHECK_VALUE(feats.dim() == 2, "feats must have shape [N, C], got ", feats.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(feats.scalar_type()), "feats must be floating point, got ",
                   feats.scalar_type());
  TORCH_CHECK_TYPE(offset_ptr.scalar_type() == at::kLong, "offset_ptr must be int64, got ",
                   offset_ptr.scalar_type());
  TORCH_CHECK_VALUE(offset_ptr.device().is_cpu(), "offset_ptr must be on the CPU (it sizes the GEMMs)");
  TORCH_CHECK_VALUE(offset_ptr.dim() == 1 && offset_ptr.size(0) == K + 1,
                    "offset_ptr must have shape [K + 1] = [", K + 1, "], got ", offset_ptr.sizes());
  for (const at::Tensor* idx : {&in_idx, &out_idx}) {
    TORCH_CHECK_TYPE(idx->scalar_type() == at::kInt, "in_idx and out_idx must be int32, got ",
                     idx->scalar_type());
    TORCH_CHECK_VALUE(idx->dim() == 1, "in_idx and out_idx must be 1-D, got ", idx->sizes());
    TORCH_CHECK_VALUE(idx->device() == feats.device(), "in_idx and out_idx must be on ",
                      feats.device(), ", got ", idx->device());
  }
  TORCH_CHECK_VALUE(in_idx.size(0) == out_idx.size(0), "in_idx and out_idx differ in length: ",
                    in_idx.size(0), " vs ", out_idx.size(0));
  const int64_t* ptr = offset_ptr.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[K] == in_idx.size(0),
                    "offset_ptr must run from 0 to the number of pairs ", in_idx.size(0));
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(ptr[k] <= ptr[k + 1], "offset_ptr must not decrease");
  }
  TORCH_CHECK_VALUE(identity_offset >= -1 && identity_offset < K,
                    "identity_offset must be -1 or an offset index below ", K, ", got ", identity_offset);
}

// Row bounds are checked once here so the kernels can index without checks.
void check_index_bounds(const at::Tensor& idx, int64_t rows, const char* name) {
  if (idx.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(idx);
  const int64_t min_value = lo.item<int64_t>(), max_value = hi.item<int64_t>();
  TORCH_CHECK_VALUE(min_value >= 0 && max_value < rows, name, " must index rows in [0, ", rows,
                    "), got values in [", min_value, ", ", max_value, "]");
}

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
  TORCH_CHECK_VALUE(weight.dim() == 3, "weight must have shape [K, C_in, C_out], got ", weight.sizes());
  const int64_t K = weight.size(0);
  check_pairs(feats_, offset_ptr, in_idx_, out_idx_, K, identity_offset);
  TORCH_CHECK_VALUE(weight.size(1) == feats_.size(1), "weight expects ", weight.size(1),
                    " input channels but feats have ", feats_.size(1));
  TORCH_CHECK_TYPE(weight.scalar_type() == feats_.scalar_type(), "weight dtype ", weight.scalar_type(),
                   " differs from feats dtype ", feats_.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == feats_.device(), "weight is on ", weight.device(),
                    " but feats are on ", feats_.device());
  TORCH_CHECK_VALUE(num_out >= 0, "num_out must be >= 0, got ", num_out);
  const at::Tensor feats = feats_.contiguous();
  const at::Tensor in_idx = in_idx_.contiguous(), out_idx = out_idx_.contiguous();
  check_index_bounds(in_idx, feats.size(0), "in_idx");
  check_index_bounds(out_idx, num_out, "out_idx");
  const int64_t* ptr = offset_ptr.data_ptr<int64_t>();

  at::Tensor out;
  if (identity_offset >= 0) {
    TORCH_CHECK_VALUE(feats.size(0) == num_out && ptr[identity_offset + 1] - ptr[identity_offset] == num_out,
                      "identity_offset needs one pair per row and as many outputs as inputs");
    out = at::mm(feats, weight.select(0, identity_offset));  // [N, C_out]
  } else {
    out = at::zeros({num_out, weight.size(2)}, feats.options());
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
    rows.scatter_add(r, out_idx.data_ptr<int32_t>() + ptr[k], n, out);
  }
  return out;
}

at::Tensor conv_weight_grad_driver(const at::Tensor& feats_, const at::Tensor& grad_out_,
                                   const at::Tensor& offset_ptr, const at::Tensor& in_idx_,
                                   const at::Tensor& out_idx_, int64_t identity_offset,
                                   const RowKernels& rows) {
  const int64_t K = offset_ptr.dim() == 1 ? offset_ptr.size(0) - 1 : -1;
  TORCH_CHECK_VALUE(K >= 1, "offset_ptr must have shape [K + 1] with K >= 1, got ", offset_ptr.sizes());
  check_pairs(feats_, offset_ptr, in_idx_, out_idx_, K, identity_offset);
  TORCH_CHECK_VALUE(grad_out_.dim() == 2, "grad_out must have shape [N_out, C_out], got ", grad_out_.sizes());
  TORCH_CHECK_TYPE(grad_out_.scalar_type() == feats_.scalar_type(), "grad_out dtype ",
                   grad_out_.scalar_type(), " differs from feats dtype ", feats_.scalar_type());
  TORCH_CHECK_VALUE(grad_out_.device() == feats_.device(), "grad_out and feats must share a device");
  const at::Tensor feats = feats_.contiguous(), grad_out = grad_out_.contiguous();
  const at::Tensor in_idx = in_idx_.contiguous(), out_idx = out_idx_.contiguous();
  check_index_bounds(in_idx, feats.size(0), "in_idx");
  check_index_bounds(out_idx, grad_out.size(0), "out_idx");
  const int64_t* ptr = offset_ptr.data_ptr<int64_t>();

  at::Tensor grad_weight = at::zeros({K, feats.size(1), grad_out.size(1)}, feats.options());
  if (identity_offset >= 0) {
    TORCH_CHECK_VALUE(feats.size(0) == grad_out.size(0),
                      "identity_offset needs as many outputs as inputs");
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
