"""Reading a part's ``checksums.txt``: ClickHouse's own size and hash of each file.

Format version 4 (all servers since 2016; see CLICKHOUSE.md): a text line
``checksums format version: 4`` then a ClickHouse-compressed stream of blocks
(16-byte CityHash128 of the block, a method byte 0x82 LZ4 / 0x02 none / 0x90
ZSTD, UInt32 size including the 9-byte header, UInt32 decompressed size,
payload). Decompressed: VarUInt count, then per file, sorted by name: name,
VarUInt size, 16-byte hash, a byte "is compressed" and, if set, VarUInt
uncompressed size and its 16-byte hash. Version 3 is the same record stream
without compression.

The hash is a chained CityHash128, not cryptographic; casbackup uses it only
as a cheap "unchanged?" signal next to the file's inode identity, never as a
content address, and does not need to verify it. A file that does not parse
means "no checksums": the part's files are simply read.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import zstandard

_HEADER = struct.Struct(
    "<16sBII"
)  # checksum, method, compressed size (incl. header), decompressed size
_METHOD_NONE, _METHOD_LZ4, _METHOD_ZSTD = 0x02, 0x82, 0x90
MAX_CHECKSUMS_BYTES = 64 * 1024 * 1024  # a part with millions of files would still fit


class ChecksumsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class FileChecksum:
    size: int
    hash: bytes  # 16 bytes, of the file as stored on disk


def read_checksums(path: Path) -> dict[str, FileChecksum] | None:
    """The checksums of a part's files, keyed by path inside the part; None if unusable."""
    try:
        return load_checksums(path)
    except (OSError, ChecksumsError):
        return None


def load_checksums(path: Path) -> dict[str, FileChecksum]:
    """A checksums.txt, read at most to its size limit and never through a symlink.

    Raises FileNotFoundError if there is none, another OSError if it cannot be
    read, ChecksumsError if it is not a regular file or does not parse.
    """
    fd, found = open_regular(path)
    with open(fd, "rb", buffering=0) as stream:
        if not stat.S_ISREG(found.st_mode):
            raise ChecksumsError("not a regular file")
        data = stream.read(MAX_CHECKSUMS_BYTES + 1)
    return parse_checksums(data)


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read descriptor for ``path`` and what it is, checked after opening, not before.

    O_NOFOLLOW: a symlink is not followed (ELOOP); O_NONBLOCK: a FIFO does not
    hang the open. The caller decides what a non-regular file means, and
    closes the descriptor.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def parse_checksums(data: bytes) -> dict[str, FileChecksum]:
    line_end = data.find(b"\n")
    if line_end < 0 or len(data) > MAX_CHECKSUMS_BYTES:
        raise ChecksumsError("no version line")
    header = data[:line_end].decode("ascii", "replace")
    prefix = "checksums format version: "
    if not header.startswith(prefix) or not header[len(prefix) :].isdigit():
        raise ChecksumsError(f"unexpected first line {header[:60]!r}")
    version = int(header[len(prefix) :])
    body = data[line_end + 1 :]
    if version == 4:
        body = _decompress_stream(body)
    elif version != 3:
        raise ChecksumsError(f"unsupported checksums format version {version}")
    return _parse_records(body)


def _decompress_stream(data: bytes) -> bytes:
    out = bytearray()
    position = 0
    while position < len(data):
        if position + _HEADER.size > len(data):
            raise ChecksumsError("truncated block header")
        _checksum, method, compressed_size, size = _HEADER.unpack_from(data, position)
        if compressed_size < 9 or position + 16 + compressed_size > len(data):
            raise ChecksumsError("block size out of range")
        if len(out) + size > MAX_CHECKSUMS_BYTES:
            raise ChecksumsError("decompresses beyond the limit")
        payload = data[position + _HEADER.size : position + 16 + compressed_size]
        try:
            if method == _METHOD_NONE:
                block = payload
            elif method == _METHOD_LZ4:
                block = lz4.block.decompress(payload, uncompressed_size=size)
            elif method == _METHOD_ZSTD:
                block = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
            else:
                raise ChecksumsError(f"unknown compression method {method:#x}")
        except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
            raise ChecksumsError(str(exc)) from None
        if len(block) != size:
            raise ChecksumsError("block decompressed to the wrong size")
        out += block
        position += 16 + compressed_size
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def varuint(self) -> int:
        value = shift = 0
        while True:
            if self.position >= len(self.data) or shift > 63:
                raise ChecksumsError("bad VarUInt")
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def take(self, count: int) -> bytes:
        if count < 0 or self.position + count > len(self.data):
            raise ChecksumsError("truncated record")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk


def _parse_records(body: bytes) -> dict[str, FileChecksum]:
    reader = _Reader(body)
    count = reader.varuint()
    if count > len(body):
        raise ChecksumsError("file count larger than the data")
    result: dict[str, FileChecksum] = {}
    for _ in range(count):
        name = reader.take(reader.varuint()).decode("utf-8", "replace")
        size = reader.varuint()
        digest = reader.take(16)
        compressed = reader.take(1)[0]
        if compressed:
            reader.varuint()
            reader.take(16)
        result[name] = FileChecksum(size, digest)
    return result
