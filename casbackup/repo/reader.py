"""Reading chunks back: coalesced ranged reads, verification, and file assembly.

Restore asks for many chunks at once (all files of a part). They are grouped by
pack and sorted by offset, and neighbours closer than ``max_gap`` are fetched
in one ranged read (one S3 GET instead of dozens), capped at ``max_span`` bytes
so memory stays bounded. Every chunk is decompressed with a hard size limit and
checked against its BLAKE3 id before a single byte of it reaches a file.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from casbackup.errors import (
    ChunkCorrupt,
    IntegrityError,
    ObjectNotFound,
    PackCorrupt,
    PackMissing,
)
from casbackup.file_errors import writing
from casbackup.repo import keys
from casbackup.repo.chunker import chunk_id as digest_of
from casbackup.repo.compression import decompress
from casbackup.repo.manifest import FileContent
from casbackup.store.base import ObjectStore, Prefetches

MiB = 1024 * 1024
DEFAULT_MAX_GAP = 1 * MiB
DEFAULT_MAX_SPAN = 8 * MiB
# A verified chunk: raw ones are views of the range read that held them.
Raw = bytes | memoryview


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    pack_id: bytes
    offset: int
    length: int
    raw_size: int
    compression: int


@dataclass
class RangeRead:
    """One ranged GET of a pack and the chunks it serves."""

    pack_id: bytes
    start: int
    end: int
    chunks: list[tuple[bytes, ChunkLocation]] = field(default_factory=list)


def plan_reads(
    locations: Mapping[bytes, ChunkLocation],
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
) -> list[RangeRead]:
    by_pack: dict[bytes, list[tuple[bytes, ChunkLocation]]] = defaultdict(list)
    for cid, loc in locations.items():
        by_pack[loc.pack_id].append((cid, loc))
    reads: list[RangeRead] = []
    for pack_id in sorted(by_pack):
        current: RangeRead | None = None
        for cid, loc in sorted(by_pack[pack_id], key=lambda item: item[1].offset):
            end = loc.offset + loc.length
            if (
                current is not None
                and loc.offset - current.end <= max_gap
                and end - current.start <= max_span
            ):
                current.end = max(current.end, end)
            else:
                current = RangeRead(pack_id, loc.offset, end)
                reads.append(current)
            current.chunks.append((cid, loc))
    return reads


class ChunkFetcher:
    """Fetches and verifies chunks from a store, several ranged reads in parallel."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        threads: int = 4,
        max_gap: int = DEFAULT_MAX_GAP,
        max_span: int = DEFAULT_MAX_SPAN,
    ) -> None:
        self.store = store
        self.threads = max(1, threads)
        self.max_gap = max_gap
        self.max_span = max_span
        self.bytes_fetched = 0
        self._count_lock = threading.Lock()

    def fetch_into(
        self, locations: Mapping[bytes, ChunkLocation], sink: Callable[[bytes, Raw], None]
    ) -> None:
        """Hand every verified chunk to ``sink`` from the worker that fetched it.

        Where the consumer is itself thread-safe and releases the GIL (writing
        a file with pwrite), this keeps decompression, hashing and writing all
        in the workers: restoring 1 GB went from 1.9 s to about half that.
        Memory: ``threads`` ranges and their chunks at a time.
        """
        reads = plan_reads(locations, self.max_gap, self.max_span)
        # Reads start in order, ``threads`` at a time: the one starting read i
        # hints read i + threads, the first of the next wave, so the disk is
        # reading it while this wave is decompressed and written.
        ahead = self.threads if self.reads_ahead else len(reads)

        def serve(index: int) -> None:
            if index + ahead < len(reads):
                self._hint(reads[index + ahead])
            for cid, raw in self._serve(reads[index]):
                sink(cid, raw)

        if self.threads == 1 or len(reads) <= 1:
            for index in range(len(reads)):
                serve(index)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="casbackup-fetch") as pool:
            for future in [pool.submit(serve, index) for index in range(len(reads))]:
                future.result()

    @property
    def reads_ahead(self) -> bool:
        """Whether the store takes read-ahead hints (a local repository does, S3 does not)."""
        return isinstance(self.store, Prefetches)

    def prefetch_first(self, locations: Mapping[bytes, ChunkLocation]) -> None:
        """Hint the first wave of reads a later ``fetch_into`` of ``locations`` will make.

        ``fetch_into`` hints its reads one wave ahead, but its own first wave
        starts cold; called for the next batch while the current one is
        fetched, this covers that wave too.
        """
        if self.reads_ahead:
            for read in plan_reads(locations, self.max_gap, self.max_span)[: self.threads]:
                self._hint(read)

    def _hint(self, read: RangeRead) -> None:
        if isinstance(self.store, Prefetches):
            self.store.prefetch(keys.pack_key(read.pack_id), read.start, read.end - read.start)

    def _serve(self, read: RangeRead) -> Iterator[tuple[bytes, Raw]]:
        pack = read.pack_id.hex()
        try:
            data = self.store.get(keys.pack_key(read.pack_id), read.start, read.end - read.start)
        except ObjectNotFound:
            raise PackMissing(pack=pack) from None
        if len(data) != read.end - read.start:
            raise PackCorrupt(
                pack=pack,
                detail=f"range [{read.start}, {read.end}) returned {len(data)} bytes (truncated)",
            )
        with self._count_lock:
            self.bytes_fetched += len(data)
        view = memoryview(data)
        for cid, loc in read.chunks:
            blob = view[loc.offset - read.start : loc.offset - read.start + loc.length]
            raw = decompress(loc.compression, blob, loc.raw_size, chunk=cid.hex(), pack=pack)
            if digest_of(raw) != cid:
                raise ChunkCorrupt(chunk=cid.hex(), pack=pack, detail="BLAKE3 digest mismatch")
            yield cid, raw


Locator = Callable[[Iterable[bytes]], Mapping[bytes, ChunkLocation]]


@dataclass
class FileTarget:
    path: Path
    content: FileContent
    mode: int = 0o644


# Files held open at once by ``write_files``: well below the 1024 descriptors
# of the usual soft limit (systemd's default too), whatever one part holds (a
# wide part of a 600-column table has some 2,400 files).
MAX_OPEN_FILES = 400


def write_files(
    fetcher: ChunkFetcher, locate: Locator, targets: list[FileTarget], *, fsync: bool = False
) -> int:
    """Create every target file from its chunks; returns bytes written.

    Targets must not exist yet (they go into a fresh temporary directory). Each
    chunk is fetched once per group of files (``MAX_OPEN_FILES``) even if
    several files (or one file twice) use it, and written with pwrite at every
    offset that needs it; sizes are checked against the index before anything
    is fetched.

    Each file's blocks are allocated before it is written (``preallocate``).
    No fsync by default, like ClickHouse itself (``fsync_after_insert`` and
    ``fsync_part_directory`` are off by default): one per file made restores of
    parts with many small files several times slower.
    """
    locations = _locate_files(locate, [(t.path.name, t.content) for t in targets])
    return sum(
        _write_group(fetcher, locations, targets[start : start + MAX_OPEN_FILES], fsync=fsync)
        for start in range(0, len(targets), MAX_OPEN_FILES)
    )


def _locate_files(
    locate: Locator, files: list[tuple[str, FileContent]]
) -> Mapping[bytes, ChunkLocation]:
    """Where the files' chunks are, once every chunk is indexed and each file's add up to its size."""
    locations = locate({cid for _, content in files for cid in content.chunks})
    missing = [cid for _, content in files for cid in content.chunks if cid not in locations]
    if missing:
        raise IntegrityError(
            detail=f"{len(set(missing))} chunks are not in the index, e.g. {missing[0].hex()}"
        )
    for name, content in files:
        size = sum(locations[cid].raw_size for cid in content.chunks)
        if size != content.size:
            raise IntegrityError(
                detail=f"{name}: chunks add up to {size} bytes, file has {content.size}"
            )
    return locations


def read_files(
    fetcher: ChunkFetcher, locate: Locator, contents: Iterable[FileContent]
) -> dict[bytes, bytes]:
    """Small files whole in memory, by file id, each chunk verified as ``write_files`` does.

    For what casbackup reads itself before restoring (a part's
    ``columns.txt``); the caller bounds the sizes, as all of it is held at once.
    """
    files = {content.id: content for content in contents}
    locations = _locate_files(locate, [(cid.hex(), content) for cid, content in files.items()])
    buffers = {file_id: bytearray(content.size) for file_id, content in files.items()}
    needs: dict[bytes, list[tuple[bytes, int]]] = {}
    for file_id, content in files.items():
        offset = 0
        for cid in content.chunks:
            needs.setdefault(cid, []).append((file_id, offset))
            offset += locations[cid].raw_size

    def place(cid: bytes, raw: Raw) -> None:  # disjoint slices: no lock needed
        for file_id, offset in needs[cid]:
            buffers[file_id][offset : offset + len(raw)] = raw

    fetcher.fetch_into({cid: locations[cid] for cid in needs}, place)
    return {file_id: bytes(buffer) for file_id, buffer in buffers.items()}


def _write_group(
    fetcher: ChunkFetcher,
    locations: Mapping[bytes, ChunkLocation],
    targets: list[FileTarget],
    *,
    fsync: bool,
) -> int:
    """Write files whose chunks are known to be indexed and to add up; every descriptor is closed."""
    needs: dict[bytes, list[tuple[int, int]]] = {}
    for index, target in enumerate(targets):
        offset = 0
        for cid in target.content.chunks:
            needs.setdefault(cid, []).append((index, offset))
            offset += locations[cid].raw_size
    fds: list[int] = []
    written = 0
    completed = False  # a close's error is raised only if nothing else was
    made: set[Path] = set()  # a part's files share a few directories: one mkdir each
    try:
        for target in targets:
            if target.path.parent not in made:
                with writing(target.path.parent):
                    target.path.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.path.parent)
            with writing(target.path):
                fd = os.open(
                    target.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
                fds.append(fd)
                preallocate(fd, target.content.size)
        lock = threading.Lock()

        def place(cid: bytes, raw: Raw) -> None:
            nonlocal written
            for index, offset in needs[cid]:
                view = memoryview(raw)
                position = offset
                with writing(targets[index].path):
                    while view:
                        count = os.pwrite(fds[index], view, position)
                        view = view[count:]
                        position += count
            with lock:
                written += len(raw)

        fetcher.fetch_into({cid: locations[cid] for cid in needs}, place)
        for fd, target in zip(fds, targets, strict=True):
            with writing(target.path):
                if fsync:
                    os.fsync(fd)
                # Permission bits only, never writable by others: a mode from a backup
                # is untrusted, and no part or config file is setuid, setgid, sticky
                # or world-writable (in ClickHouse's data directory anyone could then
                # change the rows).
                os.fchmod(fd, target.mode & 0o775)
        completed = True
    finally:
        closing = None
        for fd, target in zip(fds, targets, strict=False):
            try:
                os.close(fd)
            except OSError as exc:  # NFS may report a full disk only here
                closing = closing or (target.path, exc)
        if closing is not None and completed:
            with writing(closing[0]):
                raise closing[1]
    return written


def preallocate(fd: int, size: int) -> None:
    """Give a new file of ``size`` bytes its blocks now (``fallocate``), before it is written.

    As restic's restorer does. A full disk then fails here, before any data
    is copied, and each file gets its extents at once instead of ext4
    reserving delayed allocations chunk by chunk. Speed: within the churn
    benchmark's spread, no cost by hand (docs/benchmarks.md). Where the
    filesystem has no fallocate (older NFS, some FUSE), the file is
    extended sparsely, as before; glibc's ``posix_fallocate`` would instead
    write a byte into every block first.
    """
    if size > 0:
        fallocate = _libc_fallocate()
        if fallocate is not None:
            import ctypes  # here, not at the top: only restores need it, not every start-up

            code = errno.EINTR
            while code == errno.EINTR:  # a signal: retry, as os functions do (PEP 475)
                code = 0 if fallocate(fd, 0, 0, size) == 0 else ctypes.get_errno()
            if code == 0:
                return
            if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(code, os.strerror(code))
    os.ftruncate(fd, size)


@functools.cache
def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """fallocate(2) from the C library (Linux); None where there is none."""
    import ctypes  # see preallocate

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    # fallocate64 takes a 64-bit off_t whatever the build (32-bit glibc's fallocate does not).
    function = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)
