// Coordinate packing and output-coordinate math shared by the CPU and CUDA kernel-map code.
//
// A coordinate (b, x, y, z) packs into one non-negative int64 key:
//   bits 62..54  batch   (9 bits,  0 .. 511)
//   bits 53..36  x + 2^17 (18 bits, x in [-131072, 131071])
//   bits 35..18  y + 2^17
//   bits 17..0   z + 2^17
// Bit 63 stays 0, so -1 (kEmptyKey) never collides with a real key. Ordering keys orders
// coordinates lexicographically by (b, x, y, z). Adding an offset to an in-range coordinate adds a
// constant to its key, which is what lets the sort-based kernel map merge shifted key lists.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace pointsparse {

constexpr int kAxisBits = 18;
constexpr int kBatchBits = 9;
constexpr int32_t kAxisBias = 1 << (kAxisBits - 1);
constexpr int32_t kCoordMin = -kAxisBias;         // -131072
constexpr int32_t kCoordMax = kAxisBias - 1;      //  131071
constexpr int32_t kBatchMax = (1 << kBatchBits) - 1;  // 511
constexpr int64_t kAxisMask = (int64_t{1} << kAxisBits) - 1;
constexpr int64_t kEmptyKey = -1;

PS_HD int64_t pack_key(int32_t b, int32_t x, int32_t y, int32_t z) {
  return (int64_t(b) << (3 * kAxisBits)) | (int64_t(x + kAxisBias) << (2 * kAxisBits)) |
         (int64_t(y + kAxisBias) << kAxisBits) | int64_t(z + kAxisBias);
}

// coord: pointer to 4 int32 (b, x, y, z), assumed inside the packable range.
PS_HD int64_t pack_coord(const int32_t* coord) {
  return pack_key(coord[0], coord[1], coord[2], coord[3]);
}

// Key of (b, x+dx, y+dy, z+dz); kEmptyKey when the shifted coordinate leaves the packable range
// (no input can live there, and the plain key sum would alias another coordinate).
PS_HD int64_t shift_key(int64_t key, int32_t dx, int32_t dy, int32_t dz) {
  const int64_t fx = ((key >> (2 * kAxisBits)) & kAxisMask) + dx;
  const int64_t fy = ((key >> kAxisBits) & kAxisMask) + dy;
  const int64_t fz = (key & kAxisMask) + dz;
  if (fx < 0 || fx > kAxisMask || fy < 0 || fy > kAxisMask || fz < 0 || fz > kAxisMask) {
    return kEmptyKey;
  }
  return key + (int64_t(dx) << (2 * kAxisBits)) + (int64_t(dy) << kAxisBits) + int64_t(dz);
}

// floor(v / m) * m for m > 0, correct for negative v (C++ division truncates toward zero).
PS_HD int32_t floor_to_multiple(int32_t v, int32_t m) {
  const int32_t q = v / m;
  return (q * m > v ? q - 1 : q) * m;
}

// Output coordinate of a strided conv: each spatial axis floored to a multiple of factor.
// coord, out: 4 int32 (b, x, y, z); factor: 3 int32 (tensor stride times conv stride).
PS_HD void downsample_coord(const int32_t* coord, const int32_t* factor, int32_t* out) {
  out[0] = coord[0];
  for (int a = 0; a < 3; ++a) out[a + 1] = floor_to_multiple(coord[a + 1], factor[a]);
}

// First index in sorted[0, n) whose key is >= key (n when none).
PS_HD int64_t lower_bound_key(const int64_t* sorted, int64_t n, int64_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace pointsparse
