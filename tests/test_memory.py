"""retain_freed_memory: a large block freed and allocated again costs no new page faults."""

import platform
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from pointsparse.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm-up: the heap settles after the first blocks
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MiB: above glibc's largest mmap threshold
before = faults()
for _ in range(10):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="mallopt is glibc's")
def test_freed_large_blocks_are_reused_without_page_faults():
    # glibc maps each 64 MiB block afresh, so its pages fault every time (in 2 MiB pages at the least,
    # where transparent huge pages are on); retained, the heap serves the same pages again.
    # (The heap may still move once or twice after the warm-up: at most two blocks' pages.)
    default, retained = _faults("default"), _faults("retain")
    assert default >= 10 * (64 << 20) // (2 << 20)
    assert retained <= 2 * (64 << 20) // 4096 and retained < default / 4
