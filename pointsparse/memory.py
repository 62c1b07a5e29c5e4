"""Keeping freed memory in the process, so that large tensors do not page-fault on every step.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps them on free, and trims the heap top beyond its trim threshold. A MinkUNet step on a 90k-voxel
scan allocates dozens of such blocks (``[N, 96]`` float features are 35 MB), so every step touches
hundreds of thousands of new pages; on a virtual machine whose host reclaims freed guest memory each
of those faults is far dearer than on bare metal (measured here: a 2.5 s training step took 8 s).
:func:`retain_freed_memory` turns both off for the process: freed blocks stay in the heap and are
reused. The process's resident size then stays at its peak, as with jemalloc or tcmalloc, which
serve the same purpose when preloaded (``LD_PRELOAD``). ``pointsparse train`` and the MinkUNet
benchmark call it; other programs opt in.
"""

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Stops glibc malloc from unmapping large blocks and trimming the heap, for this process.
    Returns whether it took effect (False off glibc, e.g. on macOS or with musl)."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the largest int keeps the heap top however much is free.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
