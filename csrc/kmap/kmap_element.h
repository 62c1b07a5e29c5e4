// Per-(output row, offset) kernel-map logic shared by the CPU loops and the CUDA kernels.
//
// neighbors is row-major [N_out, K] int32, -1 where absent. In a symmetric (submanifold, odd
// kernel) map offset K-1-k is the negation of offset k, so a match o + d_k = i also gives
// i + d_{K-1-k} = o: only offsets 0 .. K/2 are queried and the mirrored entry is written too.
// The centre offset K/2 is the identity there and needs no lookup.
#pragma once

#include <cstdint>

#include "../common/coords.h"
#include "../common/hash_table.h"
#include "../common/host_device.h"

namespace pointsparse {

// Offsets each output row queries: all K, or 0 .. K/2 when symmetric.
PS_HD int32_t num_queried_offsets(int32_t K, bool symmetric) { return symmetric ? K / 2 + 1 : K; }

// Stores input row i (or -1) as neighbour k of output row o in table row `row`, and when symmetric
// o as neighbour K-1-k of i in table row `mirror` (i's own table row). A table indexed by rows has
// row = o and mirror = i; the sort path may index it by sorted position instead.
PS_HD void record_neighbor_at(int32_t* table, int32_t K, int64_t row, int64_t mirror, int64_t o, int32_t k,
                              int32_t i, bool symmetric) {
  table[row * K + k] = i;
  if (symmetric && i >= 0) table[mirror * K + (K - 1 - k)] = int32_t(o);
}

// Stores input row i (or -1) as neighbour k of output row o, and its mirror when symmetric.
PS_HD void record_neighbor(int32_t* neighbors, int32_t K, int64_t o, int32_t k, int32_t i,
                           bool symmetric) {
  record_neighbor_at(neighbors, K, o, i, o, k, i, symmetric);
}

// Key of output row o shifted by offset k (offsets: [K, 3] int32 in coordinate units).
PS_HD int64_t query_key(const int32_t* out_coords, const int32_t* offsets, int64_t o, int32_t k) {
  return shift_key(pack_coord(out_coords + 4 * o), offsets[3 * k], offsets[3 * k + 1],
                   offsets[3 * k + 2]);
}

// Hash-table kernel map: neighbour k of output row o. A row the table holds past n_in (a table
// handed in for other coordinates) counts as absent rather than writing out of bounds.
PS_HD void kmap_hash_element(HashTable table, const int32_t* out_coords, const int32_t* offsets,
                             int32_t K, bool symmetric, int64_t o, int32_t k, int64_t n_in, int32_t* neighbors) {
  int32_t i = int32_t(o);
  if (!(symmetric && k == K / 2)) {
    const int64_t key = query_key(out_coords, offsets, o, k);
    i = key == kEmptyKey ? -1 : hash_lookup(table, key);
    if (i >= n_in) i = -1;
  }
  record_neighbor(neighbors, K, o, k, i, symmetric);
}

// Sorted-key kernel map by binary search: neighbour k of output row o.
// sorted_keys / sorted_rows: [N_in] input keys ascending and the input row of each.
PS_HD void kmap_search_element(const int64_t* sorted_keys, const int64_t* sorted_rows, int64_t n_in,
                               const int32_t* out_coords, const int32_t* offsets, int32_t K,
                               bool symmetric, int64_t o, int32_t k, int32_t* neighbors) {
  int32_t i = int32_t(o);
  if (!(symmetric && k == K / 2)) {
    const int64_t key = query_key(out_coords, offsets, o, k);
    i = -1;
    if (key != kEmptyKey) {
      const int64_t pos = lower_bound_key(sorted_keys, n_in, key);
      if (pos < n_in && sorted_keys[pos] == key) i = int32_t(sorted_rows[pos]);
    }
  }
  record_neighbor(neighbors, K, o, k, i, symmetric);
}

// Packs input row i into the table with value i. Returns true when the key was already there.
PS_HD bool insert_row_element(HashTable table, const int32_t* coords, int64_t i) {
  bool was_new = false;
  const int64_t slot = hash_insert(table, pack_coord(coords + 4 * i), &was_new);
  if (was_new) table.values[slot] = int32_t(i);
  // A full table (the load factor rules it out) fails the caller's check rather than losing the row.
  return slot < 0 || !was_new;
}

// Floors row i of coords to a multiple of factor: writes out_coords[i] and its key out_keys[i].
PS_HD void downsample_element(const int32_t* coords, const int32_t* factor, int64_t i,
                              int32_t* out_coords, int64_t* out_keys) {
  downsample_coord(coords + 4 * i, factor, out_coords + 4 * i);
  out_keys[i] = pack_coord(out_coords + 4 * i);
}

// Inserts keys[i] keeping, per key, the smallest row that carries it (values start at INT32_MAX).
PS_HD void insert_first_row_element(HashTable table, const int64_t* keys, int64_t i) {
  bool was_new = false;
  const int64_t slot = hash_insert(table, keys[i], &was_new);
  if (slot >= 0) atomic_min_i32(&table.values[slot], int32_t(i));
}

// Row i is the first occurrence of its key when the table kept i for it.
PS_HD bool is_first_row_element(HashTable table, const int64_t* keys, int64_t i) {
  const int64_t slot = hash_find(table, keys[i]);
  return slot >= 0 && table.values[slot] == int32_t(i);
}

// Kernel that tiles its stride: per axis offsets 0 .. size-1 in units of the tensor stride t, so
// output cells of side cell = t * size partition space and input row i is neighbour k of the
// output at its cell's corner. Writes neighbors[o, k] = i; returns false when that entry was
// already taken (a duplicate input coordinate). Inputs off the t grid, or whose corner is no
// output, have no output, as in the general build.
struct Tiling {
  int32_t cell[3], stride[3], size[3];
};

// Offset index of coordinate c within the cell at corner (x fastest: k = ix + kx * (iy + ky * iz)),
// or -1 when c lies off the tensor-stride grid.
PS_HD int32_t tiling_offset(const int32_t* c, const int32_t* corner, Tiling tiling) {
  int32_t k = 0;
  for (int a = 2; a >= 0; --a) {
    const int32_t from_corner = c[a + 1] - corner[a + 1];
    if (from_corner % tiling.stride[a] != 0) return -1;
    k = k * tiling.size[a] + from_corner / tiling.stride[a];
  }
  return k;
}

// Claims neighbors[o, k] for input row i; false when a duplicate input took it first.
PS_HD bool record_tiling_neighbor(int32_t* neighbors, int32_t K, int64_t o, int32_t k, int64_t i) {
  return atomic_cas_i32(&neighbors[o * K + k], -1, int32_t(i)) == -1;
}

PS_HD bool tiling_element(HashTable outputs, const int32_t* in_coords, Tiling tiling, int32_t K,
                          int64_t i, int64_t n_out, int32_t* neighbors) {
  const int32_t* c = in_coords + 4 * i;
  int32_t corner[4];
  downsample_coord(c, tiling.cell, corner);
  const int32_t k = tiling_offset(c, corner, tiling);
  if (k < 0) return true;
  const int32_t o = hash_lookup(outputs, pack_coord(corner));
  return o < 0 || o >= n_out || record_tiling_neighbor(neighbors, K, o, k, i);  // (o >= n_out: a wrong table)
}

// Whether output row o sits on a cell corner (required of every output of a tiling map).
PS_HD bool is_cell_corner_element(const int32_t* out_coords, Tiling tiling, int64_t o) {
  const int32_t* c = out_coords + 4 * o;
  int32_t corner[4];
  downsample_coord(c, tiling.cell, corner);
  return corner[1] == c[1] && corner[2] == c[2] && corner[3] == c[3];
}

// Position j of a stable sort starts a run of equal keys; its row is that key's first occurrence.
PS_HD bool is_run_start(const int64_t* sorted_keys, int64_t j) {
  return j == 0 || sorted_keys[j] != sorted_keys[j - 1];
}

// Bit k % 32 of word k / 32 is set when neighbour k of the row exists.
// row: [K] int32 neighbours of one output; words: [W] int32, W = ceil(K / 32).
PS_HD void bitmask_element(const int32_t* row, int32_t K, int32_t word, int32_t* words) {
  uint32_t bits = 0;
  const int32_t end = K < 32 * (word + 1) ? K : 32 * (word + 1);
  for (int32_t k = 32 * word; k < end; ++k) bits |= uint32_t(row[k] >= 0) << (k - 32 * word);
  words[word] = int32_t(bits);
}

// The transposed table: input row i reaches output row o through offset k when
// neighbors[o, k] == i, so transposed[i, k] = o. Each (i, k) occurs once, so writes never collide.
// neighbors [N_out, K], transposed [N_in, K] (filled with -1 beforehand). Returns false, writing
// nothing, for an entry past N_in (a table handed in unchecked).
PS_HD bool transpose_element(const int32_t* neighbors, int64_t K, int64_t o, int64_t k, int64_t n_in,
                             int32_t* transposed) {
  const int32_t i = neighbors[o * K + k];
  if (i >= n_in) return false;
  if (i >= 0) transposed[int64_t(i) * K + k] = int32_t(o);
  return true;
}

// Word `word` of a row's neighbour mask restricted to the offsets [begin, end) of one split: bit
// k % 32 set where neighbour k exists. row: [K] int32 neighbours of one output row.
PS_HD int32_t split_mask_element(const int32_t* row, int64_t begin, int64_t end, int64_t word) {
  uint32_t bits = 0;
  const int64_t first = begin > 32 * word ? begin : 32 * word;
  const int64_t last = end < 32 * (word + 1) ? end : 32 * (word + 1);
  for (int64_t k = first; k < last; ++k) bits |= uint32_t(row[k] >= 0) << (k - 32 * word);
  return int32_t(bits);
}

// Word w of the OR of the masks of tile t: rows order[t * tile_rows ...] (at most tile_rows, fewer in
// the last tile). masks: [N, W] int32; order: [N] int32, a permutation of the rows.
PS_HD int32_t tile_or_element(const int32_t* masks, const int32_t* order, int64_t n, int64_t words,
                              int64_t tile_rows, int64_t t, int64_t w) {
  uint32_t bits = 0;
  const int64_t begin = t * tile_rows, end = begin + tile_rows < n ? begin + tile_rows : n;
  for (int64_t j = begin; j < end; ++j) bits |= uint32_t(masks[int64_t(order[j]) * words + w]);
  return int32_t(bits);
}

}  // namespace pointsparse
