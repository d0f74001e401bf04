"""Checking a part's files against its ``checksums.txt``: what CHECK TABLE does, without the server.

ClickHouse hashes every file of a part as it writes it (``HashingWriteBuffer``):
CityHash128 v1.0.2, chained over 2048-byte blocks, each block hashed with the
previous result as its seed, the last partial block likewise, starting from
seed (0, 0). The part's ``checksums.txt`` records that hash and the size of
each file. Files whose hash matches are the bytes ClickHouse wrote, so a
restored part that passes is the frozen part, whatever path its bytes took
through the repository. That is the end-to-end check ``verify --restore``
needs, and on 18.16, which has no CHECK TABLE for MergeTree, the only one
besides a row fingerprint that costs a full server-side scan at backup time.

The PyPI binding (clickhouse-cityhash) ignores the seed of
``CityHash128WithSeed``, but v1.0.2's ``CityHash128(s)`` is, for inputs of
16 bytes or more, exactly ``CityHash128WithSeed(s + 16, len - 16, seed)`` with
``seed = (Fetch64(s) ^ k3, Fetch64(s + 8))``. Prefixing each block with the
seed's words (the low one xor k3) therefore gives the seeded hash through the
unseeded function. It runs at about 1.2 GB/s on one core here, holding the GIL.

Names in ``checksums.txt`` come from repository data and are untrusted: one
that is not a plain file name inside the part is a finding, never opened,
and nothing is opened through a symlink. Projections (``name.proj``
directories) are checked through their own ``checksums.txt``; the parent's
entry for one holds the total size of the projection's files (compared) and
a SipHash of their names and hashes (not recomputed here).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from clickhouse_cityhash.cityhash import CityHash128

from casbackup.clickhouse.checksums import (
    ChecksumsError,
    FileChecksum,
    load_checksums,
    open_regular,
)

BLOCK = 2048  # DBMS_DEFAULT_HASHING_BLOCK_SIZE
_K3 = 0xC949D7C7509E6557  # CityHash v1.0.2's k3
_MASK64 = (1 << 64) - 1
_SEED = struct.Struct("<QQ")
READ_SIZE = 1024 * 1024


class ClickHouseFileHash:
    """ClickHouse's checksum of a file fed in pieces of any size.

    Every block goes to CityHash128 as a new ``bytes`` (seed words joined to
    the block, one copy): the binding releases the buffer of nothing else,
    so a memoryview or bytearray argument would leak one export per block
    (about 160 MB per GB hashed, seen). Joining was also the fastest form
    measured: 1.27 GB/s on one core, against 0.46-0.59 GB/s for packing the
    seed into a reused buffer.
    """

    def __init__(self) -> None:
        self._low = 0
        self._high = 0
        self._pending = b""  # under one block

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._pending:
            take = min(BLOCK - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < BLOCK:
                return
            self._low, self._high = _chain(memoryview(self._pending), self._low, self._high)
            self._pending = b""
        whole = len(view) - len(view) % BLOCK
        self._low, self._high = _chain(view[:whole], self._low, self._high)
        self._pending = bytes(view[whole:])

    def digest(self) -> bytes:
        """The 16 bytes ``checksums.txt`` stores (low word first, little-endian)."""
        low, high = self._low, self._high
        if self._pending:
            value = CityHash128(_SEED.pack(low ^ _K3, high) + self._pending)
            low, high = value >> 64, value & _MASK64
        return _SEED.pack(low, high)


def _chain(blocks: memoryview, low: int, high: int) -> tuple[int, int]:
    """Hash whole blocks in order, each seeded with the hash before it."""
    pack, join = _SEED.pack, b"".join
    for start in range(0, len(blocks), BLOCK):
        value = CityHash128(join((pack(low ^ _K3, high), blocks[start : start + BLOCK])))
        low, high = value >> 64, value & _MASK64
    return low, high


def file_hash(path: Path, size: int | None = None) -> bytes:
    """ClickHouse's checksum of a regular file, never through a symlink.

    With ``size``, a file of another size (or not a regular file) raises
    ``PartFileError`` before anything is read: opened once, then fstat-ed, so
    what is hashed is what was checked.
    """
    fd, found = open_regular(path)
    with open(fd, "rb", buffering=0) as stream:
        if not stat.S_ISREG(found.st_mode):
            raise PartFileError("is not a regular file")
        if size is not None and found.st_size != size:
            raise PartFileError(f"has {found.st_size} bytes, checksums.txt says {size}")
        hasher = ClickHouseFileHash()
        while chunk := stream.read(READ_SIZE):
            hasher.update(chunk)
    return hasher.digest()


class PartFileError(Exception):
    """A listed file that cannot be what checksums.txt describes (the message says why)."""


# A part with more findings than this is damaged beyond what listing them helps.
MAX_PROBLEMS = 100


@dataclass
class PartCheck:
    """What checking one part found: ``problems`` empty means every listed file matched."""

    files: int = 0
    bytes: int = 0
    has_checksums: bool = True
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def check_part(directory: Path) -> PartCheck:
    """Every file ``checksums.txt`` lists, by size then by ClickHouse's hash.

    A part without ``checksums.txt`` (formats before 2016) cannot be checked
    this way; ``has_checksums`` says so and the caller decides. One that is
    there but unreadable or unparseable is a finding, not a pass.
    """
    result = PartCheck()
    _check_directory(directory, "", result)
    return result


def _check_directory(directory: Path, prefix: str, result: PartCheck) -> dict[str, FileChecksum]:
    listed = _listed(directory / "checksums.txt", prefix, result)
    for name, expected in sorted(listed.items()):
        if len(result.problems) >= MAX_PROBLEMS:
            break
        if not _plain_name(name):
            result.add(f"{prefix}checksums.txt lists an unsafe name {(prefix + name)[:200]!r}")
            continue
        shown, path = prefix + name, directory / name
        try:
            mode = os.lstat(path).st_mode
            if name.endswith(".proj") and stat.S_ISDIR(mode):
                # The parent lists a projection with the total size of its files.
                inner = _check_directory(path, f"{shown}/", result)
                if inner and sum(c.size for c in inner.values()) != expected.size:
                    result.add(f"{shown} holds other files than its part lists")
                continue
            if not stat.S_ISREG(mode):
                raise PartFileError("is not a regular file")
            actual = file_hash(path, expected.size)
        except FileNotFoundError:
            result.add(f"{shown} is missing")
            continue
        except PartFileError as exc:
            result.add(f"{shown} {exc}")
            continue
        except OSError as exc:
            result.add(f"{shown} cannot be read: {exc.strerror or exc}")
            continue
        result.files += 1
        result.bytes += expected.size
        if actual != expected.hash:
            result.add(f"{shown} does not match its checksum in checksums.txt")
    return listed


def _listed(path: Path, prefix: str, result: PartCheck) -> dict[str, FileChecksum]:
    """The part's checksums.txt; absent only makes a top-level part unchecked."""
    try:
        listed = load_checksums(path)
    except FileNotFoundError:
        if prefix:
            result.add(f"{prefix}checksums.txt is missing")
        else:
            result.has_checksums = False
        return {}
    except OSError as exc:
        result.add(f"{prefix}checksums.txt cannot be read: {exc.strerror or exc}")
        return {}
    except ChecksumsError as exc:
        result.add(f"{prefix}checksums.txt is not usable: {exc}")
        return {}
    if not listed:
        result.add(f"{prefix}checksums.txt lists no files")
    return listed


def _plain_name(name: str) -> bool:
    """A file directly inside the part, as ClickHouse names them.

    ClickHouse escapes column names into file names (``count%28%29.bin``), so
    every name it lists is printable ASCII without '/'; anything else would
    only be there to reach outside the part or into a terminal.
    """
    return (
        name not in (".", "..")
        and 0 < len(name) <= 255
        and all("!" <= c <= "~" for c in name)
        and "/" not in name
    )
