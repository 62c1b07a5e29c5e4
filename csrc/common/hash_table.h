// Open-addressing hash table of packed coordinate keys, shared by the CPU and CUDA kernel maps.
//
// Linear probing over a power-of-two capacity kept at load factor <= 0.25. Slots hold kEmptyKey
// until a compare-and-swap claims them; values (int32 row indices) sit in a parallel array and are
// written only after the claiming thread owns the slot. Inserts and lookups run in separate phases.
#pragma once

#include <cstdint>

#include "coords.h"
#include "host_device.h"

namespace pointsparse {

struct HashTable {
  int64_t* keys;    // [capacity], kEmptyKey where free
  int32_t* values;  // [capacity]
  uint64_t mask;    // capacity - 1
};

// Capacity: smallest power of two >= 4 * n (and >= 16): load factor <= 0.25, because the
// z-blocked slots below cluster more than a plain hash and probe lengths dominate lookups.
inline int64_t hash_capacity(int64_t n) {
  int64_t capacity = 16;
  while (capacity < 4 * n) capacity <<= 1;
  return capacity;
}

// Slot of a key: a splitmix64 finaliser of the key without its two lowest z bits, times 4, plus
// those bits. Four z-consecutive voxels thus share one 32-byte run of key slots, so the queries of
// a kernel's z-column mostly hit one cache line, while columns still spread over the table.
PS_HD uint64_t hash_key(int64_t key) {
  uint64_t h = uint64_t(key) >> 2;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return (h << 2) | (uint64_t(key) & 3);
}

// Atomically: if *addr == expected, store desired. Returns the value seen before.
PS_HD int64_t atomic_cas_i64(int64_t* addr, int64_t expected, int64_t desired) {
#ifdef __CUDA_ARCH__
  return int64_t(atomicCAS(reinterpret_cast<unsigned long long*>(addr),
                           static_cast<unsigned long long>(expected),
                           static_cast<unsigned long long>(desired)));
#else
  __atomic_compare_exchange_n(addr, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  return expected;
#endif
}

// Atomically: if *addr == expected, store desired. Returns the value seen before.
PS_HD int32_t atomic_cas_i32(int32_t* addr, int32_t expected, int32_t desired) {
#ifdef __CUDA_ARCH__
  return atomicCAS(addr, expected, desired);
#else
  __atomic_compare_exchange_n(addr, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  return expected;
#endif
}

// Atomically: *addr = min(*addr, value).
PS_HD void atomic_min_i32(int32_t* addr, int32_t value) {
#ifdef __CUDA_ARCH__
  atomicMin(addr, value);
#else
  int32_t seen = __atomic_load_n(addr, __ATOMIC_RELAXED);
  while (value < seen &&
         !__atomic_compare_exchange_n(addr, &seen, value, true, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
  }
#endif
}

// Probes visit every slot at most once, so a full table (which the load factor rules out) ends a
// probe instead of looping forever.

// Claims the slot of key (or finds it). Returns the slot, or -1 when the table is full; *was_new
// tells whether this call claimed it.
PS_HD int64_t hash_insert(HashTable table, int64_t key, bool* was_new) {
  uint64_t slot = hash_key(key) & table.mask;
  *was_new = false;
  for (uint64_t probe = 0; probe <= table.mask; ++probe) {
    const int64_t seen = atomic_cas_i64(&table.keys[slot], kEmptyKey, key);
    if (seen == kEmptyKey || seen == key) {
      *was_new = seen == kEmptyKey;
      return int64_t(slot);
    }
    slot = (slot + 1) & table.mask;
  }
  return -1;
}

// Slot holding key, or -1. Call only after all inserts have finished.
PS_HD int64_t hash_find(HashTable table, int64_t key) {
  uint64_t slot = hash_key(key) & table.mask;
  for (uint64_t probe = 0; probe <= table.mask; ++probe) {
    const int64_t seen = table.keys[slot];
    if (seen == key) return int64_t(slot);
    if (seen == kEmptyKey) return -1;
    slot = (slot + 1) & table.mask;
  }
  return -1;
}

PS_HD int32_t hash_lookup(HashTable table, int64_t key) {
  const int64_t slot = hash_find(table, key);
  return slot < 0 ? -1 : table.values[slot];
}

}  // namespace pointsparse
