// Input validation, preparation and table allocation shared by the CPU and CUDA kernel-map entry
// functions. Every failure raises a Python exception (TypeError / ValueError) that names the offending tensor and bound.
//
// `checked`: the caller vouches for the values (coordinates the library made or has checked before,
// tables it built): dtypes and shapes are still checked, value ranges and equalities are not, so on
// CUDA nothing is read back (no host synchronisation).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "../common/column_range.h"
#include "../common/hash_table.h"
#include "kmap_element.h"

namespace pointsparse {

// coords: int32 [N, 4] (batch, x, y, z); batch in [0, 511], x/y/z in [-131072, 131071].
// Returns the per-column range (empty for no rows, or when checked: dtype and shape only), so later
// checks need no second pass.
ColumnRange check_coords(const at::Tensor& coords, const char* name, bool checked = false);

// The value half of check_coords, on a range read elsewhere (with another flag, in one read-back).
void check_coords_range(const ColumnRange& range, const char* name);

// factor: 3 positive ints (one per spatial axis). Returns them as int32.
std::array<int32_t, 3> check_factor(at::IntArrayRef factor, const char* name);

// Floored coordinates coords // factor * factor must stay inside the packable range; range is
// what check_coords returned for coords.
void check_downsample_range(const ColumnRange& range, const std::array<int32_t, 3>& factor);

// in_coords, out_coords: checked coords; offsets: int32 [K, 3] on the same device.
// symmetric requires out_coords to be in_coords, K odd and offset K-1-k == -offset k (values not
// compared when checked).
void check_kmap_inputs(const at::Tensor& in_coords, const at::Tensor& out_coords,
                       const at::Tensor& offsets, bool symmetric, bool checked);

// neighbors: int32 [N_out, K].
void check_neighbors(const at::Tensor& neighbors);

// Checked, contiguous inputs of a kernel-map build and its output, filled with -1.
struct KmapInputs {
  at::Tensor in_coords;   // int32 [N_in, 4]
  at::Tensor out_coords;  // int32 [N_out, 4]
  at::Tensor offsets;     // int32 [K, 3]
  at::Tensor neighbors;   // int32 [N_out, K], -1
  int64_t n_in, n_out;
  int32_t K;
};
KmapInputs prepare_kmap(const at::Tensor& in_coords, const at::Tensor& out_coords,
                        const at::Tensor& offsets, bool symmetric, bool checked);

// Checks coords and factor of a downsampling (range of the floored result included; for checked
// coordinates only where a factor does not divide 2^17, so that flooring could leave the range).
std::array<int32_t, 3> check_downsample_inputs(const at::Tensor& coords, at::IntArrayRef factor, bool checked);

// A hash table for n keys on the device of options: keys empty, values at fill_value.
struct OwnedHashTable {
  at::Tensor keys;    // int64 [capacity]
  at::Tensor values;  // int32 [capacity]
  HashTable view;
};
OwnedHashTable make_hash_table(int64_t n, int32_t fill_value, const at::TensorOptions& options);

// A row table handed back in (what coords_hash_table made for `rows` coordinates: keys int64 and
// values int32 [hash_capacity(rows)] on the device of like), both or neither: its view, or nullopt.
// Shapes, dtypes and device are checked; the entries are the caller's word.
std::optional<OwnedHashTable> given_hash_table(const std::optional<at::Tensor>& keys,
                                               const std::optional<at::Tensor>& values, const at::Tensor& like,
                                               int64_t rows, const char* name);

// Checked, contiguous inputs of a tiling map (kmap_tiling) and its output filled with -1.
struct TilingInputs {
  at::Tensor in_coords, out_coords;
  at::Tensor neighbors;  // int32 [N_out, K], -1
  Tiling tiling;
  int32_t K;
};
// Checked geometry of a tiling kernel over coords (corners stay packable); *K gets the volume.
Tiling check_tiling(const at::Tensor& coords, at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride,
                    int32_t* K, bool checked);

TilingInputs prepare_tiling(const at::Tensor& in_coords, const at::Tensor& out_coords,
                            at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride, bool checked);

// neighbors int32 [N_out, K] with entries in [-1, num_in) (one range pass unless checked: a map
// build, not a conv). Returns the transposed table [num_in, K] filled with -1 and neighbors contiguous.
std::pair<at::Tensor, at::Tensor> prepare_transpose(const at::Tensor& neighbors, int64_t num_in, bool checked);

// Raises the ValueError for outputs off the cell corners when flagged.
void check_cell_corners(bool off_corner);

// Raises the duplicate-coordinate ValueError when flagged.
void check_no_duplicates(bool has_duplicates, const char* name);

}  // namespace pointsparse
