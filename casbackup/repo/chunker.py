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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import blake3
import pyfastcdc

DIGEST_SIZE = 32
KiB = 1024
MiB = 1024 * KiB

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
            raise ValueError(f"unknown chunking algorithm {data.get('algorithm')!r}")
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
    """Cuts byte streams into chunks. One instance per thread: pyfastcdc is not reentrant."""

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
        )

    def split(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the chunks of ``stream`` as independent byte strings.

        Memory stays bounded by pyfastcdc's read buffer plus one chunk whatever
        the stream's length; each yielded chunk is a copy, because the library
        reuses its buffer for the next one.
        """
        head = stream.read(self.params.min_size)
        if len(head) < self.params.min_size:
            if head:
                yield head
            return
        for piece in self._cdc.cut_stream(_Prepended(head, stream)):
            yield bytes(piece.data)

    def split_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The same cut points as ``split`` for data already in memory."""
        if len(data) < self.params.min_size:
            if data:
                yield bytes(data)
            return
        for piece in self._cdc.cut_buf(data):
            yield bytes(piece.data)


class _Prepended:
    """A reader that replays bytes already consumed (the small-file probe) before the stream."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readinto(self, buffer: memoryview) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._stream.readinto(buffer)  # type: ignore[attr-defined,no-any-return]
