// CPU kernel maps and strided output coordinates by hashing (both cores via at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <climits>

#include "../kmap_checks.h"
#include "../kmap_element.h"
#include "kmap_cpu.h"

namespace pointsparse {
namespace {

constexpr int64_t kGrain = 1024;

// The table of coords' rows (row i at its packed key); duplicates raise (found while inserting, no
// extra pass, so even for checked coordinates).
OwnedHashTable row_table(const at::Tensor& coords, const char* name) {
  const OwnedHashTable table = make_hash_table(coords.size(0), -1, coords.options());
  const int32_t* ptr = coords.data_ptr<int32_t>();
  check_no_duplicates(any_row(coords.size(0), [&](int64_t i) { return insert_row_element(table.view, ptr, i); }),
                      name);
  return table;
}

std::tuple<at::Tensor, at::Tensor> coords_hash_table_cpu(const at::Tensor& coords_, bool checked) {
  check_coords(coords_, "coords", checked);
  const OwnedHashTable table = row_table(coords_.contiguous(), "coords");
  return {table.keys, table.values};
}

at::Tensor build_kmap_hash_cpu(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                               const at::Tensor& offsets_, bool symmetric, bool checked,
                               const std::optional<at::Tensor>& table_keys,
                               const std::optional<at::Tensor>& table_values) {
  const KmapInputs args = prepare_kmap(in_coords_, out_coords_, offsets_, symmetric, checked);
  const std::optional<OwnedHashTable> given =
      given_hash_table(table_keys, table_values, args.in_coords, args.n_in, "in_coords");
  if (args.n_in == 0 || args.n_out == 0) return args.neighbors;
  const OwnedHashTable table = given ? *given : row_table(args.in_coords, "in_coords");

  const int32_t* out_ptr = args.out_coords.data_ptr<int32_t>();
  const int32_t* off_ptr = args.offsets.data_ptr<int32_t>();
  int32_t* nbr_ptr = args.neighbors.data_ptr<int32_t>();
  const int32_t queried = num_queried_offsets(args.K, symmetric);
  at::parallel_for(0, args.n_out, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int32_t k = 0; k < queried; ++k) {
        kmap_hash_element(table.view, out_ptr, off_ptr, args.K, symmetric, o, k, args.n_in, nbr_ptr);
      }
    }
  });
  return args.neighbors;
}

at::Tensor kmap_tiling_cpu(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                           at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride, bool checked,
                           const std::optional<at::Tensor>& table_keys, const std::optional<at::Tensor>& table_values) {
  const TilingInputs inputs = prepare_tiling(in_coords_, out_coords_, kernel_size, tensor_stride, checked);
  at::Tensor neighbors = inputs.neighbors;  // [N_out, K]
  const int64_t n_in = inputs.in_coords.size(0), n_out = inputs.out_coords.size(0);
  const std::optional<OwnedHashTable> given =
      given_hash_table(table_keys, table_values, inputs.out_coords, n_out, "out_coords");
  if (n_in == 0 || n_out == 0) return neighbors;
  const int32_t* in_ptr = inputs.in_coords.data_ptr<int32_t>();
  const int32_t* out_ptr = inputs.out_coords.data_ptr<int32_t>();
  const Tiling tiling = inputs.tiling;
  check_cell_corners(any_row(n_out, [&](int64_t o) { return !is_cell_corner_element(out_ptr, tiling, o); }));

  const OwnedHashTable table = given ? *given : row_table(inputs.out_coords, "out_coords");
  int32_t* nbr_ptr = neighbors.data_ptr<int32_t>();
  check_no_duplicates(any_row(n_in, [&](int64_t i) {
                        return !tiling_element(table.view, in_ptr, tiling, inputs.K, i, n_out, nbr_ptr);
                      }),
                      "in_coords");
  return neighbors;
}

at::Tensor downsample_coords_hash_cpu(const at::Tensor& coords_, at::IntArrayRef factor_, bool checked) {
  const auto factor = check_downsample_inputs(coords_, factor_, checked);
  const at::Tensor coords = coords_.contiguous();
  const int64_t n = coords.size(0);
  at::Tensor floored = at::empty_like(coords);                  // [N, 4]
  at::Tensor keys = at::empty({n}, coords.options().dtype(at::kLong));  // [N]
  at::Tensor is_first = at::empty({n}, coords.options().dtype(at::kBool));
  if (n == 0) return floored;

  const int32_t* in_ptr = coords.data_ptr<int32_t>();
  int32_t* floored_ptr = floored.data_ptr<int32_t>();
  int64_t* key_ptr = keys.data_ptr<int64_t>();
  bool* first_ptr = is_first.data_ptr<bool>();
  const OwnedHashTable table = make_hash_table(n, INT32_MAX, coords.options());
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      downsample_element(in_ptr, factor.data(), i, floored_ptr, key_ptr);
      insert_first_row_element(table.view, key_ptr, i);
    }
  });
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) first_ptr[i] = is_first_row_element(table.view, key_ptr, i);
  });
  return floored.index({is_first});
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("coords_hash_table", &coords_hash_table_cpu);
  m.impl("build_kmap_hash", &build_kmap_hash_cpu);
  m.impl("downsample_coords_hash", &downsample_coords_hash_cpu);
  m.impl("kmap_tiling", &kmap_tiling_cpu);
}

}  // namespace pointsparse
