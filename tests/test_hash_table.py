"""The kernel maps' hash table (csrc/common/hash_table.h) compiled for the host: probes end on a
full table (the load factor rules one out, but no probe may loop forever), and a table at its
load factor finds what it holds and nothing else."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
COMPILER = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")

PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "common/hash_table.h"
using namespace pointsparse;

int main() {
  // Full: 16 slots, 16 keys.
  std::vector<int64_t> keys(16, kEmptyKey);
  std::vector<int32_t> values(16, -1);
  HashTable full{keys.data(), values.data(), 15};
  bool was_new = false;
  for (int32_t i = 0; i < 16; ++i) {
    if (hash_insert(full, pack_key(0, i, 0, 0), &was_new) < 0 || !was_new) return 1;
  }
  if (hash_insert(full, pack_key(0, 99, 0, 0), &was_new) != -1 || was_new) return 2;  // no slot left
  if (hash_find(full, pack_key(0, 99, 0, 0)) != -1) return 3;                           // absent
  if (hash_find(full, pack_key(0, 7, 0, 0)) < 0) return 4;                              // present
  // At the load factor: 100 keys in hash_capacity(100) slots.
  const int64_t capacity = hash_capacity(100);
  std::vector<int64_t> k2(capacity, kEmptyKey);
  std::vector<int32_t> v2(capacity, -1);
  HashTable table{k2.data(), v2.data(), uint64_t(capacity - 1)};
  for (int32_t i = 0; i < 100; ++i) {
    const int64_t slot = hash_insert(table, pack_key(1, i, -i, 2 * i), &was_new);
    table.values[slot] = i;
  }
  for (int32_t i = 0; i < 100; ++i) {
    if (hash_lookup(table, pack_key(1, i, -i, 2 * i)) != i) return 5;
    if (hash_lookup(table, pack_key(1, i, i + 1, 2 * i)) != -1) return 6;
  }
  std::puts("ok");
  return 0;
}
"""


@pytest.mark.skipif(COMPILER is None, reason="needs a C++ compiler")
def test_probes_end_on_a_full_table_and_find_exactly_what_the_table_holds(tmp_path):
    source, binary = tmp_path / "hash_table_test.cpp", tmp_path / "hash_table_test"
    source.write_text(PROGRAM)
    subprocess.run([COMPILER, "-std=c++17", "-O1", f"-I{CSRC}", str(source), "-o", str(binary)], check=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30)  # a loop would time out
    assert run.returncode == 0 and run.stdout.strip() == "ok", f"exit {run.returncode}"
