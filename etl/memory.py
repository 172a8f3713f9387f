"""Keep the process's memory from growing with its thread count (glibc's malloc only).

A run handles pages as large buffers: a page's body and its COPY text, about 1 MB each.
glibc's malloc raises its mmap threshold the first time such a buffer is freed and from then
on serves them from per-thread arenas (up to eight per core), which keep the memory once it
is freed: the peak RSS then grows with the number of threads (TCXC_WORKERS fetch slots and
twice as many loaders), not with the data. A fixed threshold keeps every large buffer in a
mapping of its own, returned to the system when freed, and two arenas are plenty for threads
that mostly wait on sockets. Measured with 4 workers under 100 ms of latency: 122 MB peak
without, 93 MB with (bench/load_bench.py). Other C libraries are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENAS = 2


def limit_heap_growth() -> bool:
    """Apply the settings above; True when the C library took them (call before threads start)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENAS))
