"""Ranges of a file as read-only views of the page cache, faulted in up front.

A restore reads each pack range, checks and writes out the chunks in it, and
drops it. ``read()`` first copies the range out of the page cache into a new
buffer: in the churn benchmark's restores that copy (``_copy_to_iter``) was
0.56–1.08 s of CPU per 1.27 GB (docs/benchmarks.md). A mapping hands BLAKE3,
zstd and ``pwrite`` the page-cache pages themselves. What it saved, by hand
(docs/benchmarks.md has the runs): system time and, on chdb, a quarter of a
restore's peak RSS; the wall time stayed the same. A restore competes with
the ClickHouse server on its own host, so the CPU and memory matter there.

The danger of mapping is SIGBUS: touching a mapped page the kernel cannot
read (a disk error, a file truncated underneath) kills the process instead of
raising an error. So every page of the range is faulted in at once with
``MADV_POPULATE_READ`` (Linux 5.14), which reports such a failure as an
``OSError`` instead; the caller then reads the range the ordinary way, where
the same failure is a clean ``StoreError``. What is left is a page dropped
from the cache after it was populated and then unreadable on the way back,
or a pack truncated by something other than casbackup while a restore reads
it (casbackup never rewrites a pack; it writes new ones and unlinks old ones,
which leaves existing mappings intact).
"""

from __future__ import annotations

import mmap
import sys

# Below this a mapping costs more (mmap, madvise, munmap and its TLB
# shootdown across threads) than the copy it saves.
MIN_MAPPED_SIZE = 1024 * 1024

# linux/mman.h; Python 3.11's mmap module does not export it.
MADV_POPULATE_READ = 22


def map_populated(fd: int, offset: int, length: int) -> memoryview | None:
    """``length`` bytes at ``offset`` of ``fd`` as a read-only view, every page already read.

    ``None`` where that cannot be had safely: not Linux, a range too small to
    be worth it, a file that cannot be mapped, a kernel without
    ``MADV_POPULATE_READ``, or a page that could not be read. The range must
    lie within the file (the caller clamps it to the file's size).
    """
    if sys.platform != "linux" or length < MIN_MAPPED_SIZE:
        return None
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, offset + length - base, prot=mmap.PROT_READ, offset=base)
    except (OSError, ValueError):
        return None
    try:
        # Sequential first: the populating faults then read ahead in large
        # requests, as read() does, instead of 128 KiB around each fault (by
        # hand on an evicted repository, without it restores were 0.1–0.25 s
        # slower than with read(); with it, as fast).
        mapping.madvise(mmap.MADV_SEQUENTIAL, 0, len(mapping))
        mapping.madvise(MADV_POPULATE_READ, 0, len(mapping))
    except OSError:
        mapping.close()
        return None
    # The view keeps the mapping alive; it is unmapped when the last view of
    # it (the chunks sliced from it included) is released.
    return memoryview(mapping)[offset - base :]
