// CPU kernel maps and strided output coordinates by sorting packed keys.
//
// Keys are sorted once; adding an offset to every output key keeps them sorted, so each column of
// offsets is one merge of two sorted lists, split into chunks that run in parallel (a binary
// search finds where each chunk starts in the input keys).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "../../common/for_each_task.h"
#include "../kmap_checks.h"
#include "../kmap_element.h"
#include "kmap_cpu.h"

namespace pointsparse {
namespace {

constexpr int64_t kGrain = 1024;
constexpr int64_t kMergeChunk = 4096;

struct SortedKeys {
  at::Tensor keys;  // int64 [N] ascending
  at::Tensor rows;  // int64 [N] row of each key in the unsorted input
  bool in_order = false;  // rows[j] == j: the input rows were already in key order
};

constexpr int kRadixBits = 11;
constexpr int64_t kRadixMin = 4096;  // below this, ATen's sort
constexpr int64_t kRadixPart = 16384;  // keys per part of a parallel pass (at least)

// One stable counting pass of an LSD radix sort, by bits [shift, shift + kRadixBits): the keys are
// cut into parts that count their digits in parallel, then each part scatters its keys to its own
// slots of every digit (parts in order within a digit, so the pass stays stable).
void radix_pass(const uint64_t* key_in, const int64_t* row_in, int64_t n, int shift, int64_t parts,
                uint64_t* key_out, int64_t* row_out) {
  constexpr int64_t kDigits = int64_t(1) << kRadixBits;
  const uint64_t mask = kDigits - 1;
  const int64_t part_size = (n + parts - 1) / parts;
  std::vector<int64_t> slot(parts * kDigits, 0);  // [parts, digits]: count, then next slot
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t part = first; part < last; ++part) {
      int64_t* count = slot.data() + part * kDigits;
      for (int64_t i = part * part_size; i < std::min(n, (part + 1) * part_size); ++i) {
        ++count[(key_in[i] >> shift) & mask];
      }
    }
  });
  int64_t total = 0;
  for (int64_t digit = 0; digit < kDigits; ++digit) {
    for (int64_t part = 0; part < parts; ++part) total += std::exchange(slot[part * kDigits + digit], total);
  }
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t part = first; part < last; ++part) {
      int64_t* next = slot.data() + part * kDigits;
      for (int64_t i = part * part_size; i < std::min(n, (part + 1) * part_size); ++i) {
        const int64_t j = next[(key_in[i] >> shift) & mask]++;
        key_out[j] = key_in[i], row_out[j] = row_in[i];
      }
    }
  });
}

// Stable ascending sort of int64 keys [N] with the row of each: an LSD radix sort over the bits in
// which the keys differ from the smallest (about three 11-bit passes for a LiDAR scan's packed
// coordinates; ATen's stable sort took about four times as long on 80k keys here).
SortedKeys sort_keys(const at::Tensor& keys) {
  const int64_t n = keys.size(0);
  if (n < kRadixMin) {
    auto [sorted, rows] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    return {sorted, rows};
  }
  const int64_t* k = keys.data_ptr<int64_t>();
  if (std::is_sorted(k, k + n)) {  // rows already in key order (a voxelised scan's, by unique)
    return {keys, at::arange(n, keys.options()), true};
  }
  const int64_t lowest = *std::min_element(k, k + n);
  uint64_t spread = 0;
  for (int64_t i = 0; i < n; ++i) spread |= uint64_t(k[i]) - uint64_t(lowest);
  const int bits = spread == 0 ? 0 : 64 - __builtin_clzll(spread);
  std::vector<uint64_t> key_a(n), key_b(n);
  std::vector<int64_t> row_a(n), row_b(n);
  for (int64_t i = 0; i < n; ++i) key_a[i] = uint64_t(k[i]) - uint64_t(lowest), row_a[i] = i;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / kRadixPart));
  for (int shift = 0; shift < bits; shift += kRadixBits) {
    radix_pass(key_a.data(), row_a.data(), n, shift, parts, key_b.data(), row_b.data());
    key_a.swap(key_b), row_a.swap(row_b);
  }
  at::Tensor sorted = at::empty({n}, keys.options()), rows = at::empty({n}, keys.options());
  int64_t* s = sorted.data_ptr<int64_t>();
  int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) s[i] = int64_t(key_a[i] + uint64_t(lowest)), r[i] = row_a[i];
  return {sorted, rows};
}

bool has_adjacent_equal(const at::Tensor& sorted) {
  const int64_t* s = sorted.data_ptr<int64_t>();
  std::atomic<bool> found{false};
  at::parallel_for(1, sorted.size(0), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (!is_run_start(s, j)) {
        found = true;
        return;
      }
    }
  });
  return found;
}

// Offsets that differ only in dz form a column: their shifted keys differ by dz alone, so they
// are adjacent in the sorted input keys. One merge pointer per column finds the smallest dz, and
// the other members scan a few keys forward from it.
struct Column {
  int32_t dx, dy;
  std::vector<std::pair<int32_t, int32_t>> members;  // (dz, k), dz ascending
};

// Columns to query. A symmetric map needs one offset of each (d, -d) pair: the columns with
// (dx, dy) < (0, 0) and, in column (0, 0), the offsets with dz < 0; the centre is the identity.
std::vector<Column> query_columns(const int32_t* offsets, int32_t K, bool symmetric) {
  std::map<std::pair<int32_t, int32_t>, std::vector<std::pair<int32_t, int32_t>>> by_column;
  for (int32_t k = 0; k < K; ++k) {
    const int32_t dx = offsets[3 * k], dy = offsets[3 * k + 1], dz = offsets[3 * k + 2];
    const bool negative_column = dx < 0 || (dx == 0 && dy < 0);
    const bool centre_column = dx == 0 && dy == 0;
    if (symmetric && !negative_column && !(centre_column && dz < 0)) continue;
    by_column[{dx, dy}].push_back({dz, k});
  }
  std::vector<Column> columns;
  for (auto& [xy, members] : by_column) {
    std::sort(members.begin(), members.end());
    columns.push_back({xy.first, xy.second, members});
  }
  return columns;
}

// One column over sorted output positions [begin, end): merge with the sorted input keys. The
// table's rows are the outputs' sorted positions (by_position; for a symmetric map the mirrored
// entry goes to the input's sorted position, which is its output position too) or the output rows
// themselves; the entries are always input and output rows.
void merge_column(const SortedKeys& in, const SortedKeys& out, const Column& column, int32_t K,
                  bool symmetric, bool by_position, int64_t begin, int64_t end, int32_t* table) {
  const int64_t* in_keys = in.keys.data_ptr<int64_t>();
  const int64_t* in_rows = in.rows.data_ptr<int64_t>();
  const int64_t* out_keys = out.keys.data_ptr<int64_t>();
  const int64_t* out_rows = out.rows.data_ptr<int64_t>();
  const int64_t n_in = in.keys.size(0);
  // Plain sum, possibly aliased near the range edge: used only to move the pointer, which stays
  // at or below every exact key of the column because the sum is monotone in the output key.
  const int64_t base_delta = (int64_t(column.dx) << (2 * kAxisBits)) +
                             (int64_t(column.dy) << kAxisBits) + column.members.front().first;
  int64_t p = lower_bound_key(in_keys, n_in, out_keys[begin] + base_delta);
  for (int64_t j = begin; j < end; ++j) {
    const int64_t target = out_keys[j] + base_delta;
    while (p < n_in && in_keys[p] < target) ++p;
    const int64_t o = out_rows[j];
    int64_t q = p;
    for (const auto& [dz, k] : column.members) {
      const int64_t key = shift_key(out_keys[j], column.dx, column.dy, dz);
      int32_t i = -1;
      if (key != kEmptyKey) {
        while (q < n_in && in_keys[q] < key) ++q;
        if (q < n_in && in_keys[q] == key) i = int32_t(in_rows[q]);
      }
      record_neighbor_at(table, K, by_position ? j : o, by_position ? q : i, o, k, i, symmetric);
    }
  }
}

at::Tensor build_kmap_sort_cpu(const at::Tensor& in_coords_, const at::Tensor& out_coords_,
                               const at::Tensor& offsets_, bool symmetric, bool checked) {
  const KmapInputs args = prepare_kmap(in_coords_, out_coords_, offsets_, symmetric, checked);
  if (args.n_in == 0 || args.n_out == 0) return args.neighbors;
  at::Tensor neighbors = args.neighbors;  // [N_out, K]

  const SortedKeys in = sort_keys(pack_rows_cpu(args.in_coords));
  check_no_duplicates(has_adjacent_equal(in.keys), "in_coords");
  const SortedKeys out = args.in_coords.is_same(args.out_coords) ? in : sort_keys(pack_rows_cpu(args.out_coords));

  // Outputs not in key order (downsampled rows come in first-occurrence order): the merge fills a
  // table whose rows are sorted positions, written nearly in order (the mirrored entries of a
  // symmetric map land a few positions away instead of anywhere), and each finished row is then
  // copied to its output row: one scattered row per output instead of two scattered entries per pair.
  // The table is the -1-filled one prepare_kmap made; the result, every row copied, needs no fill.
  const bool by_position = !out.in_order;
  const at::Tensor table = neighbors;  // [N_out, K]
  if (by_position) neighbors = at::empty_like(table);
  int32_t* table_ptr = table.data_ptr<int32_t>();
  const int64_t* out_rows = out.rows.data_ptr<int64_t>();
  if (symmetric) {
    at::parallel_for(0, args.n_out, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) table_ptr[j * args.K + args.K / 2] = int32_t(out_rows[j]);
    });
  }
  const std::vector<Column> columns = query_columns(args.offsets.data_ptr<int32_t>(), args.K, symmetric);
  const int64_t chunks = (args.n_out + kMergeChunk - 1) / kMergeChunk;
  // Columns differ in cost (the symmetric map's centre column has one member, the others three):
  // tasks go to whichever thread is free (a static split left one thread waiting a quarter of the merge).
  for_each_task(int64_t(columns.size()) * chunks, [&](int64_t task) {
    const Column& column = columns[task / chunks];
    const int64_t first = (task % chunks) * kMergeChunk;
    merge_column(in, out, column, args.K, symmetric, by_position, first, std::min(first + kMergeChunk, args.n_out),
                 table_ptr);
  });
  if (by_position) {
    int32_t* nbr_ptr = neighbors.data_ptr<int32_t>();
    at::parallel_for(0, args.n_out, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        std::memcpy(nbr_ptr + out_rows[j] * args.K, table_ptr + j * args.K, args.K * sizeof(int32_t));
      }
    });
  }
  return neighbors;
}

// Rows of coords floored to multiples of cell, grouped into runs of equal corners by one sort of
// their keys: corners int32 [N, 4], the sort, and is_first bool [N] marking each run's first row
// in coords' order (the numbering downsample_coords_* gives outputs).
struct FlooredRuns {
  at::Tensor corners;
  SortedKeys sorted;
  at::Tensor is_first;
};

FlooredRuns floor_to_runs(const at::Tensor& coords, const int32_t* cell) {
  const int64_t n = coords.size(0);
  at::Tensor corners = at::empty_like(coords);                          // [N, 4]
  at::Tensor keys = at::empty({n}, coords.options().dtype(at::kLong));  // [N]
  const int32_t* in_ptr = coords.data_ptr<int32_t>();
  int32_t* corner_ptr = corners.data_ptr<int32_t>();
  int64_t* key_ptr = keys.data_ptr<int64_t>();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) downsample_element(in_ptr, cell, i, corner_ptr, key_ptr);
  });
  SortedKeys sorted = sort_keys(keys);
  at::Tensor is_first = at::empty({n}, coords.options().dtype(at::kBool));  // [N]
  const int64_t* sorted_ptr = sorted.keys.data_ptr<int64_t>();
  const int64_t* rows_ptr = sorted.rows.data_ptr<int64_t>();
  bool* first_ptr = is_first.data_ptr<bool>();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) first_ptr[rows_ptr[j]] = is_run_start(sorted_ptr, j);
  });
  return {corners, std::move(sorted), is_first};
}

at::Tensor downsample_coords_sort_cpu(const at::Tensor& coords_, at::IntArrayRef factor_, bool checked) {
  const auto factor = check_downsample_inputs(coords_, factor_, checked);
  const at::Tensor coords = coords_.contiguous();
  if (coords.size(0) == 0) return at::empty_like(coords);
  const FlooredRuns runs = floor_to_runs(coords, factor.data());
  return runs.corners.index({runs.is_first});
}

// Downsampling and tiling map from one sort of the cell-corner keys: runs of equal corners are the
// outputs, numbered by first occurrence as downsample_coords_* numbers them, and every input
// becomes neighbour k of its run's output.
std::tuple<at::Tensor, at::Tensor> downsample_tiling_cpu(const at::Tensor& coords_, at::IntArrayRef kernel_size,
                                                         at::IntArrayRef tensor_stride, bool checked) {
  int32_t K = 0;
  const Tiling tiling = check_tiling(coords_, kernel_size, tensor_stride, &K, checked);
  const at::Tensor coords = coords_.contiguous();
  const int64_t n = coords.size(0);
  if (n == 0) return {at::empty_like(coords), at::full({0, K}, -1, coords.options())};
  const FlooredRuns runs = floor_to_runs(coords, tiling.cell);
  const at::Tensor &corners = runs.corners, &is_first = runs.is_first;
  const int32_t* in_ptr = coords.data_ptr<int32_t>();
  const int32_t* corner_ptr = corners.data_ptr<int32_t>();
  const int64_t* sorted_ptr = runs.sorted.keys.data_ptr<int64_t>();
  const int64_t* rows_ptr = runs.sorted.rows.data_ptr<int64_t>();
  const at::Tensor first_output = at::cumsum(is_first, 0, at::kInt) - 1;  // [N], valid at first rows
  const int32_t* first_output_ptr = first_output.data_ptr<int32_t>();
  at::Tensor output = at::empty({n}, coords.options());  // [N] output row of every input
  int32_t* output_ptr = output.data_ptr<int32_t>();
  int32_t current = -1;
  for (int64_t j = 0; j < n; ++j) {  // one cheap serial pass: runs share their first row's output
    if (is_run_start(sorted_ptr, j)) current = first_output_ptr[rows_ptr[j]];
    output_ptr[rows_ptr[j]] = current;
  }
  at::Tensor out_coords = corners.index({is_first});                              // [N_out, 4]
  at::Tensor neighbors = at::full({out_coords.size(0), K}, -1, coords.options());  // [N_out, K]
  int32_t* nbr_ptr = neighbors.data_ptr<int32_t>();
  check_no_duplicates(any_row(n, [&](int64_t i) {
                        const int32_t k = tiling_offset(in_ptr + 4 * i, corner_ptr + 4 * i, tiling);
                        return k >= 0 && !record_tiling_neighbor(nbr_ptr, K, output_ptr[i], k, i);
                      }),
                      "coords");
  return {out_coords, neighbors};
}

}  // namespace

TORCH_LIBRARY_IMPL(pointsparse, CPU, m) {
  m.impl("build_kmap_sort", &build_kmap_sort_cpu);
  m.impl("downsample_coords_sort", &downsample_coords_sort_cpu);
  m.impl("downsample_tiling", &downsample_tiling_cpu);
}

}  // namespace pointsparse
