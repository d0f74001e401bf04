"""Process-wide tuning applied once at start-up by the entry points."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep freed chunk-sized buffers in the heap instead of returning them to the OS.

    Every chunk (up to 4 MiB) and pack (32 MiB) is a fresh ``bytes`` object.
    By default glibc serves such sizes with mmap and unmaps them on free, so
    each new one page-faults its memory in again, with the GIL held: measured
    on the store benchmark, 3 of 11 seconds. Raising the mmap and trim
    thresholds lets the heap reuse them; the cost is that the peak working
    set stays resident for the life of the process (bounded, see the writer).
    A no-op on C libraries other than glibc.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 64 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
