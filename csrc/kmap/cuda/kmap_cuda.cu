// CUDA kernel maps: the per-element logic of kmap_element.h, one thread per element.
// Kernels take raw pointers; ATen appears only in the entry functions (allocation, sort, checks).
// Device guards are generic (a no-op for a CPU tensor), so that a call mixing devices reaches the
// checks and raises the ValueError naming the tensor rather than a CUDA guard's RuntimeError.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <climits>

#include "../kmap_checks.h"
#include "../kmap_element.h"
#include "../kmap_reorder.h"

namespace pointsparse {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

struct Factor {
  int32_t v[3];
};

__global__ void pack_kernel(const int32_t* coords, int64_t n, int64_t* keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) keys[i] = pack_coord(coords + 4 * i);
}

__global__ void insert_rows_kernel(HashTable table, const int32_t* coords, int64_t n, int* duplicate) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n && insert_row_element(table, coords, i)) *duplicate = 1;
}

// One thread per (output row, queried offset).
__global__ void kmap_hash_kernel(HashTable table, const int32_t* out_coords, const int32_t* offsets,
                                 int32_t K, bool symmetric, int64_t n_out, int32_t queried, int64_t n_in,
                                 int32_t* neighbors) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n_out * queried) return;
  kmap_hash_element(table, out_coords, offsets, K, symmetric, t / queried, int32_t(t % queried), n_in,
                    neighbors);
}

__global__ void kmap_search_kernel(const int64_t* sorted_keys, const int64_t* sorted_rows,
                                   int64_t n_in, const int32_t* out_coords, const int32_t* offsets,
                                   int32_t K, bool symmetric, int64_t n_out, int32_t queried,
                                   int32_t* neighbors) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n_out * queried) return;
  kmap_search_element(sorted_keys, sorted_rows, n_in, out_coords, offsets, K, symmetric,
                      t / queried, int32_t(t % queried), neighbors);
}

__global__ void adjacent_equal_kernel(const int64_t* sorted_keys, int64_t n, int* duplicate) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < n && !is_run_start(sorted_keys, j)) *duplicate = 1;
}

__global__ void downsample_kernel(const int32_t* coords, Factor factor, int64_t n,
                                  int32_t* floored, int64_t* keys) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) downsample_element(coords, factor.v, i, floored, keys);
}

__global__ void insert_first_kernel(HashTable table, const int64_t* keys, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) insert_first_row_element(table, keys, i);
}

__global__ void is_first_kernel(HashTable table, const int64_t* keys, int64_t n, bool* is_first) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) is_first[i] = is_first_row_element(table, keys, i);
}

__global__ void run_start_kernel(const int64_t* sorted_keys, const int64_t* rows, int64_t n,
                                 bool* is_first) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < n) is_first[rows[j]] = is_run_start(sorted_keys, j);
}

__global__ void cell_corner_kernel(const int32_t* out_coords, Tiling tiling, int64_t n, int* off_corner) {
  const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (o < n && !is_cell_corner_element(out_coords, tiling, o)) *off_corner = 1;
}

__global__ void tiling_kernel(HashTable outputs, const int32_t* in_coords, Tiling tiling, int32_t K,
                              int64_t n, int64_t n_out, int32_t* neighbors, int* duplicate) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n && !tiling_element(outputs, in_coords, tiling, K, i, n_out, neighbors)) *duplicate = 1;
}

__global__ void bitmask_kernel(const int32_t* neighbors, int64_t n, int32_t K, int32_t words,
                               int32_t* bitmask) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n * words) return;
  const int64_t o = t / words;
  bitmask_element(neighbors + o * K, K, int32_t(t % words), bitmask + o * words);
}

// One thread per (output row, offset). An entry past n_in (a checked table that was not) fails the
// assertion instead of writing out of bounds.
__global__ void transpose_kernel(const int32_t* neighbors, int64_t n, int64_t K, int64_t n_in, int32_t* transposed) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n * K) return;
  const bool in_range = transpose_element(neighbors, K, t / K, t % K, n_in, transposed);
  CUDA_KERNEL_ASSERT(in_range);
}

// One thread per (row, word).
__global__ void split_masks_kernel(const int32_t* neighbors, int64_t n, int64_t K, int64_t begin, int64_t end,
                                   int64_t words, int32_t* masks) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n * words) masks[t] = split_mask_element(neighbors + (t / words) * K, begin, end, t % words);
}

// One thread per (tile, word).
__global__ void tile_or_kernel(const int32_t* masks, const int32_t* order, int64_t n, int64_t words,
                               int64_t tile_rows, int64_t tiles, int32_t* tile_masks) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < tiles * words) tile_masks[t] = tile_or_element(masks, order, n, words, tile_rows, t / words, t % words);
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

at::Tensor pack_rows_cuda(const at::Tensor& coords) {
  const int64_t n = coords.size(0);
  at::Tensor keys = at::empty({n}, coords.options().dtype(at::kLong));  // [N]
  if (n > 0) {
    pack_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(coords.data_ptr<int32_t>(), n,
                                                          keys.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return keys;
}

at::Tensor pack_coords_cuda(const at::Tensor& coords) {
  check_coords(coords, "coords");
  const c10::OptionalDeviceGuard guard(at::device_of(coords));
  return pack_rows_cuda(coords.contiguous());
}

// The table of coords' rows (row i at its packed key), and int32 [1] on the device: 1 where a row
// repeats an earlier one's key. Memory-safe for rows out of the packable range too (their keys are
// garbage, their packing wrapping in int32, but every probe stays inside the table), so a caller may
// read the flag together with the range.
std::pair<OwnedHashTable, at::Tensor> insert_rows_cuda(const at::Tensor& coords) {
  const int64_t n = coords.size(0);
  const OwnedHashTable table = make_hash_table(n, -1, coords.options());
  at::Tensor duplicate = at::zeros({1}, coords.options());
  if (n > 0) {
    insert_rows_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(table.view, coords.data_ptr<int32_t>(), n,
                                                                 duplicate.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {table, duplicate};
}

// The table of coords' rows; duplicates raise unless checked (reading the flag back is the one
// synchronisation of a table).
OwnedHashTable row_table_cuda(const at::Tensor& coords, bool checked, const char* name) {
  auto [table, duplicate] = insert_rows_cuda(coords);
  if (!checked && coords.size(0) > 0) check_no_duplicates(duplicate.item<int>() != 0, name);
  return table;
}

// Unchecked coordinates are checked with one read-back, not two: their range and the duplicate flag
// together, after the insert; the range error comes first, as from check_coords.
std::tuple<at::Tensor, at::Tensor> coords_hash_table_cuda(const at::Tensor& coords_, bool checked) {
  check_coords(coords_, "coords", /*checked=*/true);  // dtype and shape; the values below
  const c10::OptionalDeviceGuard guard(at::device_of(coords_));
  const at::Tensor coords = coords_.contiguous();
  const auto [table, duplicate] = insert_rows_cuda(coords);
  if (!checked && coords.size(0) > 0) {
    std::vector<int32_t> flag;  // the duplicate flag, read back with the range
    check_coords_range(column_range(coords, duplicate, flag), "coords");
    check_no_duplicates(flag[0] != 0, "coords");
  }
  return {table.keys, table.values};
}

// A table handed in (the family's, for in_coords) is queried as it is; else one is built.
at::Tensor build_kmap_hash_cuda(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                                const at::Tensor& offsets_, bool symmetric, bool checked,
                                const std::optional<at::Tensor>& table_keys,
                                const std::optional<at::Tensor>& table_values) {
  const c10::OptionalDeviceGuard guard(at::device_of(in_coords_));
  const KmapInputs args = prepare_kmap(in_coords_, out_coords_, offsets_, symmetric, checked);
  const std::optional<OwnedHashTable> given =
      given_hash_table(table_keys, table_values, args.in_coords, args.n_in, "in_coords");
  if (args.n_in == 0 || args.n_out == 0) return args.neighbors;
  const OwnedHashTable owned = given ? *given : row_table_cuda(args.in_coords, checked, "in_coords");

  const int32_t queried = num_queried_offsets(args.K, symmetric);
  kmap_hash_kernel<<<blocks_for(args.n_out * queried), kThreads, 0, stream()>>>(
      owned.view, args.out_coords.data_ptr<int32_t>(), args.offsets.data_ptr<int32_t>(), args.K, symmetric,
      args.n_out, queried, args.n_in, args.neighbors.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return args.neighbors;
}

at::Tensor build_kmap_sort_cuda(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                                const at::Tensor& offsets_, bool symmetric, bool checked) {
  const c10::OptionalDeviceGuard guard(at::device_of(in_coords_));
  const KmapInputs args = prepare_kmap(in_coords_, out_coords_, offsets_, symmetric, checked);
  if (args.n_in == 0 || args.n_out == 0) return args.neighbors;

  auto [sorted_keys, sorted_rows] = at::sort(pack_rows_cuda(args.in_coords), /*stable=*/true, 0, false);
  if (!checked) {
    at::Tensor duplicate = at::zeros({1}, args.in_coords.options());
    adjacent_equal_kernel<<<blocks_for(args.n_in), kThreads, 0, stream()>>>(
        sorted_keys.data_ptr<int64_t>(), args.n_in, duplicate.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    check_no_duplicates(duplicate.item<int>() != 0, "in_coords");
  }

  const int32_t queried = num_queried_offsets(args.K, symmetric);
  kmap_search_kernel<<<blocks_for(args.n_out * queried), kThreads, 0, stream()>>>(
      sorted_keys.data_ptr<int64_t>(), sorted_rows.data_ptr<int64_t>(), args.n_in,
      args.out_coords.data_ptr<int32_t>(), args.offsets.data_ptr<int32_t>(), args.K, symmetric, args.n_out, queried,
      args.neighbors.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return args.neighbors;
}

at::Tensor kmap_tiling_cuda(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                            at::IntArrayRef kernel_size, at::IntArrayRef tensor_stride, bool checked,
                            const std::optional<at::Tensor>& table_keys, const std::optional<at::Tensor>& table_values) {
  const c10::OptionalDeviceGuard guard(at::device_of(in_coords_));
  const TilingInputs inputs = prepare_tiling(in_coords_, out_coords_, kernel_size, tensor_stride, checked);
  at::Tensor neighbors = inputs.neighbors;  // [N_out, K]
  const int64_t n_in = inputs.in_coords.size(0), n_out = inputs.out_coords.size(0);
  const std::optional<OwnedHashTable> given =
      given_hash_table(table_keys, table_values, inputs.out_coords, n_out, "out_coords");
  if (n_in == 0 || n_out == 0) return neighbors;
  const int32_t* out_ptr = inputs.out_coords.data_ptr<int32_t>();
  at::Tensor flags = at::zeros({3}, inputs.out_coords.options());  // off corner, duplicate out, duplicate in
  int* flag = flags.data_ptr<int>();
  cell_corner_kernel<<<blocks_for(n_out), kThreads, 0, stream()>>>(out_ptr, inputs.tiling, n_out, flag);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  OwnedHashTable owned;
  if (given) {
    owned = *given;
  } else {
    owned = make_hash_table(n_out, -1, inputs.out_coords.options());
    insert_rows_kernel<<<blocks_for(n_out), kThreads, 0, stream()>>>(owned.view, out_ptr, n_out, flag + 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  tiling_kernel<<<blocks_for(n_in), kThreads, 0, stream()>>>(
      owned.view, inputs.in_coords.data_ptr<int32_t>(), inputs.tiling, inputs.K, n_in, n_out,
      neighbors.data_ptr<int32_t>(), flag + 2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (checked) return neighbors;
  const at::Tensor seen = flags.cpu();
  check_cell_corners(seen[0].item<int>() != 0);
  check_no_duplicates(seen[1].item<int>() != 0, "out_coords");
  check_no_duplicates(seen[2].item<int>() != 0, "in_coords");
  return neighbors;
}

at::Tensor downsample_coords_hash_cuda(const at::Tensor& coords_, at::IntArrayRef factor_, bool checked);

// Composed of the two ops it fuses on the CPU: downsampling (coordinates checked there unless
// checked), then the tiling map of the outputs it made (the map's own checks for the inputs'
// duplicates only then).
std::tuple<at::Tensor, at::Tensor> downsample_tiling_cuda(const at::Tensor& coords, at::IntArrayRef kernel_size,
                                                          at::IntArrayRef tensor_stride, bool checked) {
  int32_t K = 0;
  const Tiling tiling = check_tiling(coords, kernel_size, tensor_stride, &K, checked);
  const at::Tensor out_coords =
      downsample_coords_hash_cuda(coords, {tiling.cell[0], tiling.cell[1], tiling.cell[2]}, /*checked=*/true);
  return {out_coords, kmap_tiling_cuda(coords, out_coords, kernel_size, tensor_stride, checked, std::nullopt,
                                      std::nullopt)};
}

// Floors coords to multiples of factor. Returns (floored int32 [N, 4], keys int64 [N]).
std::tuple<at::Tensor, at::Tensor> floor_rows_cuda(const at::Tensor& coords, const Factor& factor) {
  const int64_t n = coords.size(0);
  at::Tensor floored = at::empty_like(coords);
  at::Tensor keys = at::empty({n}, coords.options().dtype(at::kLong));
  downsample_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(
      coords.data_ptr<int32_t>(), factor, n, floored.data_ptr<int32_t>(), keys.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {floored, keys};
}

Factor checked_factor(const at::Tensor& coords, at::IntArrayRef factor, bool checked) {
  const auto f = check_downsample_inputs(coords, factor, checked);
  return {{f[0], f[1], f[2]}};
}

at::Tensor downsample_coords_hash_cuda(const at::Tensor& coords_, at::IntArrayRef factor_, bool checked) {
  const Factor factor = checked_factor(coords_, factor_, checked);
  const c10::OptionalDeviceGuard guard(at::device_of(coords_));
  const at::Tensor coords = coords_.contiguous();
  const int64_t n = coords.size(0);
  if (n == 0) return at::empty_like(coords);
  auto [floored, keys] = floor_rows_cuda(coords, factor);
  const OwnedHashTable owned = make_hash_table(n, INT32_MAX, coords.options());
  const HashTable table = owned.view;
  insert_first_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(table, keys.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor is_first = at::empty({n}, coords.options().dtype(at::kBool));
  is_first_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(table, keys.data_ptr<int64_t>(), n,
                                                            is_first.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return floored.index({is_first});
}

at::Tensor downsample_coords_sort_cuda(const at::Tensor& coords_, at::IntArrayRef factor_, bool checked) {
  const Factor factor = checked_factor(coords_, factor_, checked);
  const c10::OptionalDeviceGuard guard(at::device_of(coords_));
  const at::Tensor coords = coords_.contiguous();
  const int64_t n = coords.size(0);
  if (n == 0) return at::empty_like(coords);
  auto [floored, keys] = floor_rows_cuda(coords, factor);
  auto [sorted_keys, rows] = at::sort(keys, /*stable=*/true, 0, false);
  at::Tensor is_first = at::empty({n}, coords.options().dtype(at::kBool));
  run_start_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(
      sorted_keys.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n, is_first.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return floored.index({is_first});
}

// One thread per (row, offset): a present neighbour's pair goes to offset_ptr[k] + its rank among
// the present rows of column k (ranks: an inclusive count down the column), so the pairs of an
// offset ascend by output row.
__global__ void csr_fill_kernel(const int32_t* neighbors, const int32_t* ranks, const int64_t* offset_ptr, int64_t n,
                                int64_t K, int32_t* in_idx, int32_t* out_idx) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n * K || neighbors[t] < 0) return;
  const int64_t p = offset_ptr[t % K] + ranks[t] - 1;
  in_idx[p] = neighbors[t];
  out_idx[p] = int32_t(t / K);
}

// Count, scan, fill: offset_ptr comes to the host (the one synchronisation: the pair count sizes
// the outputs, and the gather-GEMM-scatter host sizes a GEMM per offset from it), returned there.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kmap_csr_cuda(const at::Tensor& neighbors_) {
  check_neighbors(neighbors_);
  const c10::OptionalDeviceGuard guard(at::device_of(neighbors_));
  const at::Tensor neighbors = neighbors_.contiguous();                   // [N_out, K]
  const int64_t n = neighbors.size(0), K = neighbors.size(1);
  const at::Tensor ranks = neighbors.ge(0).cumsum(0, at::kInt);          // [N_out, K]
  const at::Tensor counts = n > 0 ? ranks.select(0, n - 1).to(at::kLong) : at::zeros({K}, ranks.options().dtype(at::kLong));
  const at::Tensor offset_ptr = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});  // [K + 1]
  const at::Tensor host = offset_ptr.cpu();
  const int64_t pairs = host.data_ptr<int64_t>()[K];
  at::Tensor in_idx = at::empty({pairs}, neighbors.options()), out_idx = at::empty({pairs}, neighbors.options());
  if (pairs > 0) {
    csr_fill_kernel<<<blocks_for(n * K), kThreads, 0, stream()>>>(
        neighbors.data_ptr<int32_t>(), ranks.data_ptr<int32_t>(), offset_ptr.data_ptr<int64_t>(), n, K,
        in_idx.data_ptr<int32_t>(), out_idx.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {host, in_idx, out_idx};
}

at::Tensor kmap_bitmask_cuda(const at::Tensor& neighbors_) {
  check_neighbors(neighbors_);
  const c10::OptionalDeviceGuard guard(at::device_of(neighbors_));
  const at::Tensor neighbors = neighbors_.contiguous();
  const int64_t n = neighbors.size(0);
  const int32_t K = int32_t(neighbors.size(1));
  const int32_t words = (K + 31) / 32;
  at::Tensor bitmask = at::empty({n, words}, neighbors.options());  // [N_out, W]
  if (n > 0 && words > 0) {  // K = 0 gives [N_out, 0] and no launch
    bitmask_kernel<<<blocks_for(n * words), kThreads, 0, stream()>>>(
        neighbors.data_ptr<int32_t>(), n, K, words, bitmask.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return bitmask;
}

at::Tensor kmap_transpose_cuda(const at::Tensor& neighbors_, int64_t num_in, bool checked) {
  const c10::OptionalDeviceGuard guard(at::device_of(neighbors_));
  auto [transposed, neighbors] = prepare_transpose(neighbors_, num_in, checked);  // [N_in, K], [N_out, K]
  const int64_t n = neighbors.size(0), K = neighbors.size(1);
  if (n * K > 0) {
    transpose_kernel<<<blocks_for(n * K), kThreads, 0, stream()>>>(neighbors.data_ptr<int32_t>(), n, K, num_in,
                                                                    transposed.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return transposed;
}

void split_masks_cuda(const at::Tensor& neighbors, int64_t begin, int64_t end, at::Tensor& masks) {
  const int64_t n = neighbors.size(0), words = masks.size(1);
  if (n * words == 0) return;
  split_masks_kernel<<<blocks_for(n * words), kThreads, 0, stream()>>>(
      neighbors.data_ptr<int32_t>(), n, neighbors.size(1), begin, end, words, masks.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void tile_or_cuda(const at::Tensor& masks, const at::Tensor& order, int64_t tile_rows, at::Tensor& tile_masks) {
  const int64_t words = masks.size(1), tiles = tile_masks.size(0);
  if (tiles * words == 0) return;
  tile_or_kernel<<<blocks_for(tiles * words), kThreads, 0, stream()>>>(
      masks.data_ptr<int32_t>(), order.data_ptr<int32_t>(), masks.size(0), words, tile_rows, tiles,
      tile_masks.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr ReorderKernels kCudaReorder{&split_masks_cuda, &tile_or_cuda};

std::tuple<at::Tensor, at::Tensor> kmap_reorder_cuda(const at::Tensor& neighbors, int64_t splits, int64_t tile_rows,
                                                     bool reorder) {
  const c10::OptionalDeviceGuard guard(at::device_of(neighbors));
  return kmap_reorder_driver(neighbors, splits, tile_rows, reorder, kCudaReorder);
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CUDA, m) {
  m.impl("kmap_reorder", &kmap_reorder_cuda);
  m.impl("kmap_transpose", &kmap_transpose_cuda);
  m.impl("pack_coords", &pack_coords_cuda);
  m.impl("downsample_coords_hash", &downsample_coords_hash_cuda);
  m.impl("kmap_tiling", &kmap_tiling_cuda);
  m.impl("downsample_tiling", &downsample_tiling_cuda);
  m.impl("downsample_coords_sort", &downsample_coords_sort_cuda);
  m.impl("coords_hash_table", &coords_hash_table_cuda);
  m.impl("build_kmap_hash", &build_kmap_hash_cuda);
  m.impl("build_kmap_sort", &build_kmap_sort_cuda);
  m.impl("kmap_csr", &kmap_csr_cuda);
  m.impl("kmap_bitmask", &kmap_bitmask_cuda);
}

}  // namespace pointsparse
