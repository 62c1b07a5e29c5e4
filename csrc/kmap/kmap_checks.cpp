#include "kmap_checks.h"

#include "../common/column_range.h"
#include "../common/coords.h"

namespace pointsparse {

ColumnRange check_coords(const at::Tensor& coords, const char* name, bool checked) {
  TORCH_CHECK_TYPE(coords.scalar_type() == at::kInt, name, " must be int32, got ",
                   coords.scalar_type(), " (convert with .int() after flooring)");
  TORCH_CHECK_VALUE(coords.dim() == 2 && coords.size(1) == 4, name,
                    " must have shape [N, 4] as (batch, x, y, z), got ", coords.sizes());
  if (coords.size(0) == 0 || checked) return {};
  ColumnRange range = column_range(coords);
  check_coords_range(range, name);
  return range;
}

void check_coords_range(const ColumnRange& range, const char* name) {
  const int32_t* mn = range.lo.data();
  const int32_t* mx = range.hi.data();
  TORCH_CHECK_VALUE(mn[0] >= 0 && mx[0] <= kBatchMax, name, ": batch index must be in [0, ",
                    kBatchMax, "], got values in [", mn[0], ", ", mx[0], "]");
  static const char* axes[] = {"x", "y", "z"};
  for (int a = 1; a < 4; ++a) {
    TORCH_CHECK_VALUE(mn[a] >= kCoordMin && mx[a] <= kCoordMax, name, ": ", axes[a - 1],
                      " coordinates must be in [", kCoordMin, ", ", kCoordMax, "], got values in [",
                      mn[a], ", ", mx[a], "]");
  }
}

std::array<int32_t, 3> check_factor(at::IntArrayRef factor, const char* name) {
  TORCH_CHECK_VALUE(factor.size() == 3, name, " must have 3 entries, got ", factor.size());
  std::array<int32_t, 3> out{};
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(factor[a] > 0 && factor[a] <= kCoordMax, name,
                      " entries must be positive and at most ", kCoordMax, ", got ", factor);
    out[a] = int32_t(factor[a]);
  }
  return out;
}

void check_downsample_range(const ColumnRange& range, const std::array<int32_t, 3>& factor) {
  if (range.lo.empty()) return;
  const int32_t* mn = range.lo.data();
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(floor_to_multiple(mn[a + 1], factor[a]) >= kCoordMin,
                      "downsampled coordinates leave the packable range: floor(", mn[a + 1], " / ",
                      factor[a], ") * ", factor[a], " < ", kCoordMin);
  }
}

void check_kmap_inputs(const at::Tensor& in_coords, const at::Tensor& out_coords,
                       const at::Tensor& offsets, bool symmetric, bool checked) {
  check_coords(in_coords, "in_coords", checked);
  check_coords(out_coords, "out_coords", checked);
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kInt, "offsets must be int32, got ",
                   offsets.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 2 && offsets.size(1) == 3 && offsets.size(0) > 0,
                    "offsets must have shape [K, 3] with K > 0, got ", offsets.sizes());
  TORCH_CHECK_VALUE(in_coords.device() == out_coords.device() &&
                        in_coords.device() == offsets.device(),
                    "in_coords, out_coords and offsets must be on one device, got ",
                    in_coords.device(), ", ", out_coords.device(), ", ", offsets.device());
  TORCH_CHECK_VALUE(in_coords.size(0) < (int64_t{1} << 31) && out_coords.size(0) < (int64_t{1} << 31),
                    "kernel maps index rows with int32: at most 2^31 - 1 coordinates");
  if (!symmetric) return;
  TORCH_CHECK_VALUE(in_coords.is_same(out_coords) || (checked && in_coords.sizes() == out_coords.sizes()) ||
                        at::equal(in_coords, out_coords),
                    "symmetric kernel maps need out_coords equal to in_coords (submanifold)");
  const int64_t K = offsets.size(0);
  TORCH_CHECK_VALUE(K % 2 == 1 && (checked || at::equal(offsets, -offsets.flip(0))),
                    "symmetric kernel maps need offset K-1-k == -offset k (odd, centred kernel)");
}

void check_neighbors(const at::Tensor& neighbors) {
  TORCH_CHECK_TYPE(neighbors.scalar_type() == at::kInt, "neighbors must be int32, got ",
                   neighbors.scalar_type());
  TORCH_CHECK_VALUE(neighbors.dim() == 2, "neighbors must have shape [N_out, K], got ",
                    neighbors.sizes());
}

KmapInputs prepare_kmap(const at::Tensor& in_coords, const at::Tensor& out_coords,
                        const at::Tensor& offsets, bool symmetric, bool checked) {
  check_kmap_inputs(in_coords, out_coords, offsets, symmetric, checked);
  KmapInputs inputs;
  inputs.in_coords = in_coords.contiguous();
  inputs.out_coords = in_coords.is_same(out_coords) ? inputs.in_coords : out_coords.contiguous();
  inputs.offsets = offsets.contiguous();
  inputs.n_in = in_coords.size(0);
  inputs.n_out = out_coords.size(0);
  inputs.K = int32_t(offsets.size(0));
  inputs.neighbors = at::full({inputs.n_out, inputs.K}, -1, in_coords.options());
  return inputs;
}

namespace {

// Whether every factor divides 2^17 = -kCoordMin: then flooring coordinates in range stays in range
// (kCoordMin is itself a multiple), so coordinates checked before need no range pass.
bool floors_stay_in_range(const std::array<int32_t, 3>& factor) {
  for (int32_t f : factor) {
    if (-int64_t(kCoordMin) % f != 0) return false;
  }
  return true;
}

}  // namespace

std::array<int32_t, 3> check_downsample_inputs(const at::Tensor& coords, at::IntArrayRef factor, bool checked) {
  const auto valid = check_factor(factor, "factor");
  const ColumnRange range = check_coords(coords, "coords", checked && floors_stay_in_range(valid));
  check_downsample_range(range, valid);
  return valid;
}

Tiling check_tiling(const at::Tensor& coords, at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride,
                    int32_t* K, bool checked) {
  const auto size = check_factor(kernel_size, "kernel_size");
  const auto stride = check_factor(tensor_stride, "tensor_stride");
  Tiling tiling;
  int64_t volume = 1;
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(size[a] == 1 || size[a] % 2 == 0,
                      "a tiling kernel has even sizes (offsets 0 .. k-1) or size 1, got ", kernel_size);
    volume *= size[a];
    const int64_t cell = int64_t(size[a]) * stride[a];
    TORCH_CHECK_VALUE(cell <= kCoordMax, "kernel_size * tensor_stride must be at most ", kCoordMax);
    tiling.cell[a] = int32_t(cell);
    tiling.stride[a] = stride[a];
    tiling.size[a] = size[a];
  }
  TORCH_CHECK_VALUE(volume <= INT32_MAX, "kernel volume too large: ", volume);
  const std::array<int32_t, 3> cell{tiling.cell[0], tiling.cell[1], tiling.cell[2]};
  check_downsample_range(check_coords(coords, "coords", checked && floors_stay_in_range(cell)), cell);
  *K = int32_t(volume);
  return tiling;
}

TilingInputs prepare_tiling(const at::Tensor& in_coords, const at::Tensor& out_coords,
                            at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride, bool checked) {
  TilingInputs inputs;
  inputs.tiling = check_tiling(in_coords, kernel_size, tensor_stride, &inputs.K, checked);
  check_coords(out_coords, "out_coords", checked);
  TORCH_CHECK_VALUE(in_coords.device() == out_coords.device(), "in_coords and out_coords must share a device");
  inputs.in_coords = in_coords.contiguous();
  inputs.out_coords = out_coords.contiguous();
  inputs.neighbors = at::full({out_coords.size(0), inputs.K}, -1, out_coords.options());
  return inputs;
}

std::pair<at::Tensor, at::Tensor> prepare_transpose(const at::Tensor& neighbors, int64_t num_in, bool checked) {
  check_neighbors(neighbors);
  TORCH_CHECK_VALUE(num_in >= 0 && num_in < (int64_t{1} << 31), "num_in must be in [0, 2^31), got ", num_in);
  const at::Tensor table = neighbors.contiguous();
  if (table.numel() > 0 && !checked) {
    const ColumnRange range = column_range(table.view({-1}));
    TORCH_CHECK_VALUE(range.lo[0] >= -1 && range.hi[0] < num_in, "neighbors must hold -1 or input rows in [0, ",
                      num_in, "), got values in [", range.lo[0], ", ", range.hi[0], "]");
  }
  return {at::full({num_in, table.size(1)}, -1, table.options()), table};
}

void check_cell_corners(bool off_corner) {
  TORCH_CHECK_VALUE(!off_corner, "out_coords of a tiling map must be cell corners (multiples of "
                    "kernel_size * tensor_stride), as downsampling gives them");
}

OwnedHashTable make_hash_table(int64_t n, int32_t fill_value, const at::TensorOptions& options) {
  const int64_t capacity = hash_capacity(n);
  OwnedHashTable table;
  table.keys = at::full({capacity}, kEmptyKey, options.dtype(at::kLong));
  table.values = at::full({capacity}, fill_value, options.dtype(at::kInt));
  table.view = {table.keys.data_ptr<int64_t>(), table.values.data_ptr<int32_t>(), uint64_t(capacity - 1)};
  return table;
}

std::optional<OwnedHashTable> given_hash_table(const std::optional<at::Tensor>& keys,
                                               const std::optional<at::Tensor>& values, const at::Tensor& like,
                                               int64_t rows, const char* name) {
  TORCH_CHECK_VALUE(keys.has_value() == values.has_value(), "the hash table of ", name,
                    " takes table_keys and table_values together, or neither");
  if (!keys) return std::nullopt;
  const int64_t capacity = hash_capacity(rows);
  TORCH_CHECK_TYPE(keys->scalar_type() == at::kLong && values->scalar_type() == at::kInt, "the hash table of ", name,
                   " must be int64 keys and int32 values (coords_hash_table's), got ", keys->scalar_type(), " and ",
                   values->scalar_type());
  TORCH_CHECK_VALUE(keys->dim() == 1 && keys->size(0) == capacity && values->sizes() == keys->sizes(),
                    "the hash table of ", name, " must have ", capacity, " slots (made by coords_hash_table for its ",
                    rows, " rows), got ", keys->sizes(), " and ", values->sizes());
  TORCH_CHECK_VALUE(keys->device() == like.device() && values->device() == like.device(), "the hash table of ",
                    name, " is on ", keys->device(), " but the coordinates are on ", like.device());
  OwnedHashTable table{keys->contiguous(), values->contiguous(), {}};
  table.view = {table.keys.data_ptr<int64_t>(), table.values.data_ptr<int32_t>(), uint64_t(capacity - 1)};
  return table;
}

void check_no_duplicates(bool has_duplicates, const char* name) {
  TORCH_CHECK_VALUE(!has_duplicates, name,
                    " holds duplicate coordinates; deduplicate them (e.g. sparse_quantize) first");
}

}  // namespace pointsparse
