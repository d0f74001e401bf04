"""Splitting files into content-defined chunks, and the identities of chunks and files.

Why content-defined: ClickHouse rewrites whole files when a mutation touches a
part, but a rewritten ``.bin`` keeps every compressed block before the first
changed granule byte-identical. FastCDC cut points depend only on nearby bytes,
so those shared prefixes (and shared runs elsewhere) produce the same chunks and
are stored once. Fixed-size blocks would shift and share nothing.

Sizes (see docs/design.md for the measurements behind them): files smaller than
``min_size`` are one chunk; everything else goes through FastCDC 2020 with
min 256 KiB, a target average of about 1 MiB and max 4 MiB. pyfastcdc's actual
mean is ``avg_size + min_size``, so ``avg_size`` is 768 KiB. The parameters are
part of the repository config: two writers with different parameters would
still be correct but would stop deduplicating against each other.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3
import pyfastcdc

DIGEST_SIZE = 32
KiB = 1024
MiB = 1024 * KiB

# Per reading thread: the bytes the cutter sees at once (see ``Chunker.split_file``).
WINDOW_SIZE = 16 * MiB

# Upper bound on any chunk's raw size that a reader accepts from the store
# (pyfastcdc's own limit is 16 MiB); a trailer claiming more is hostile.
MAX_CHUNK_SIZE = 16 * MiB

_FILE_ID_DOMAIN = b"casbackup.file.v1\x00"


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    min_size: int = 256 * KiB
    avg_size: int = 768 * KiB
    max_size: int = 4 * MiB
    seed: int = 0

    def __post_init__(self) -> None:
        if not (64 <= self.min_size <= MiB):
            raise ValueError("chunker min_size must be within [64 B, 1 MiB]")
        if not (256 <= self.avg_size <= 4 * MiB):
            raise ValueError("chunker avg_size must be within [256 B, 4 MiB]")
        if not (max(1024, self.min_size) <= self.max_size <= MAX_CHUNK_SIZE):
            raise ValueError("chunker max_size must be within [max(1 KiB, min_size), 16 MiB]")
        if not (self.min_size <= self.avg_size <= self.max_size):  # pyfastcdc's ValueError
            raise ValueError("chunker avg_size must be within [min_size, max_size]")
        # pyfastcdc 0.3 converts the seed to a C long: OverflowError from 2^63 up.
        if not (0 <= self.seed < 2**63):
            raise ValueError("chunker seed must be within [0, 2^63)")

    def to_dict(self) -> dict[str, int | str]:
        return {
            "algorithm": "fastcdc2020",
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ChunkerParams:
        if data.get("algorithm") != "fastcdc2020":
            raise ValueError(f"unknown chunking algorithm {repr(data.get('algorithm'))[:60]}")
        values = {name: data.get(name) for name in ("min_size", "avg_size", "max_size", "seed")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise ValueError("chunker sizes must be integers")
        return cls(**values)  # type: ignore[arg-type]


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    """A chunk is named by the BLAKE3 digest of its uncompressed bytes."""
    return blake3.blake3(data).digest()


def file_id(chunk_ids: Iterable[bytes]) -> bytes:
    """A file is named by the BLAKE3 digest of its ordered chunk ids.

    Derived from the chunk list rather than the bytes so that it can be computed
    again from a manifest or the catalog alone, without reading any data.
    """
    hasher = blake3.blake3(_FILE_ID_DOMAIN)
    for cid in chunk_ids:
        hasher.update(cid)
    return hasher.digest()


class Chunker:
    """Cuts files and buffers into chunks. One instance per thread: pyfastcdc is not reentrant."""

    def __init__(self, params: ChunkerParams, *, window_size: int | None = None) -> None:
        if window_size is None:
            window_size = max(WINDOW_SIZE, 4 * params.max_size)
        if window_size < 2 * params.max_size:
            raise ValueError("the cutting window must hold at least two maximal chunks")
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
        )
        # An anonymous mapping, not a bytearray: a bytearray is zeroed by
        # Python with the GIL held (16 MiB, each page faulted in); a mapping
        # costs nothing until the first preadv faults its pages in, in the
        # kernel, without the GIL. One per instance, so one ``split_file`` at
        # a time per instance.
        self._window = memoryview(mmap.mmap(-1, window_size))

    def split_file(self, fd: int) -> Iterator[bytes]:
        """Yield the chunks of the regular file open as ``fd``, each as its own bytes.

        Not pyfastcdc's stream reader: after every chunk it moves the unread
        rest of its buffer to the front, and each chunk then had to be copied
        out of that buffer, both with the GIL held. On a two-core full backup
        that was most of the GIL time of the reading threads, while the other
        threads waited for it. Here the cutter looks at a window read with
        ``preadv`` and reused, and each chunk is then read again on its own
        with ``pread``: two copies, both made by the kernel without the GIL,
        none in Python. A chunk's cut depends on at most ``max_size`` bytes
        from its start, so a cut is taken from the window only when that many
        bytes (or the end of the file) are in it; otherwise the window moves
        on to start at that chunk. The cuts are exactly those of cutting the
        whole file at once (``split_bytes``). Memory: one window per thread,
        whatever the file's size.

        Chunk ids are hashed from the bytes yielded, not from the window, so
        a file changing while it is read can make a wrong backup of that file
        (as any reader would), never a chunk whose bytes do not match its id.
        """
        window = self._window
        max_size = self.params.max_size
        offset = 0  # the file offset of window[0], always a chunk start
        while True:
            length = _read_at(fd, window, offset)
            if not length:
                return
            at_end = length < len(window)
            consumed = 0
            for piece in self._cdc.cut_buf(window[:length]):
                if not at_end and length - piece.offset < max_size:
                    break  # the cut might depend on bytes past the window
                yield _read_chunk(fd, offset + piece.offset, piece.length)
                consumed = piece.offset + piece.length
            if at_end:
                return
            offset += consumed

    def split_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The same cut points as ``split_file`` for data already in memory."""
        if len(data) < self.params.min_size:
            if data:
                yield bytes(data)
            return
        for piece in self._cdc.cut_buf(data):
            yield bytes(piece.data)


def _read_at(fd: int, window: memoryview, offset: int) -> int:
    """Fill ``window`` from ``offset``; fewer bytes only at the end of the file."""
    filled = 0
    while filled < len(window):
        count = os.preadv(fd, [window[filled:]], offset + filled)
        if count <= 0:
            break
        filled += count
    return filled


def _read_chunk(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:  # a short read short of the end: read on
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(errno.EIO, "the file became shorter while it was being read")
        data += more
    return data
