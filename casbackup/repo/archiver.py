"""Storing files: read, cut, hash, dedupe, compress, pack.

The archiver is given a ``known`` oracle (the catalog's chunk index, in
practice) and a ``ChunkWriter``; it never touches the catalog itself, so the
repository layer stays independent of it. Files are processed by a small
thread pool: reading, cutting (pyfastcdc), hashing (blake3) and compressing
(zstd) all release the GIL, so two threads use both cores of a small host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from casbackup.file_errors import reading
from casbackup.repo.chunker import Chunker, ChunkerParams, chunk_id, file_id
from casbackup.repo.writer import ChunkWriter

Known = Callable[[Sequence[bytes]], set[bytes]]

# Tiny files per index lookup: a few parts' worth of metadata files.
SMALL_FILE_BATCH = 512


@dataclass(frozen=True)
class StoredFile:
    file_id: bytes
    size: int
    chunks: list[bytes]
    read_bytes: int
    new_chunks: int


class FileArchiver:
    def __init__(
        self, params: ChunkerParams, writer: ChunkWriter, known: Known, *, threads: int = 2
    ) -> None:
        self.params = params
        self.writer = writer
        self.known = known
        self.threads = max(1, threads)
        self._local = threading.local()
        self._seen: set[bytes] = set()  # chunks this run knows are stored or pending
        self._seen_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="casbackup-read")
        self.read_bytes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FileArchiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store_file(self, path: Path) -> StoredFile:
        """Store one file (callable from any thread)."""
        chunks: list[bytes] = []
        size = new = 0
        for data in self._chunks_of(path):
            cid = chunk_id(data)
            chunks.append(cid)
            size += len(data)
            if self._store_chunk(cid, data):
                new += 1
        with self._seen_lock:
            self.read_bytes += size
        return StoredFile(file_id(chunks), size, chunks, size, new)

    def store_small_files(self, paths: list[Path]) -> list[StoredFile]:
        """Store files below the minimum chunk size, with one index lookup for all of them.

        A ClickHouse part has a dozen tiny files (count.txt, columns.txt, marks
        of small parts...); asking the index once per file would dominate.
        Files that turn out to have grown past the minimum go the normal way.
        """
        contents: list[bytes | None] = []
        for path in paths:
            with reading(path), open(path, "rb", buffering=0) as handle:
                data = handle.read(self.params.min_size)
            contents.append(data if len(data) < self.params.min_size else None)
        ids = [chunk_id(data) if data else None for data in contents]
        with self._seen_lock:
            unseen = {cid for cid in ids if cid is not None and cid not in self._seen}
        unseen = {cid for cid in unseen if not self.writer.is_pending(cid)}
        known = self.known(sorted(unseen)) if unseen else set()
        results: list[StoredFile] = []
        for path, data, cid in zip(paths, contents, ids, strict=True):
            if data is None:
                results.append(self.store_file(path))
                continue
            chunks = [cid] if cid is not None else []
            new = 0
            if (
                cid is not None
                and cid in unseen
                and cid not in known
                and self.writer.add(cid, data)
            ):
                new = 1
            results.append(StoredFile(file_id(chunks), len(data), chunks, len(data), new))
        with self._seen_lock:
            self._seen.update(unseen)
            self.read_bytes += sum(len(d) for d in contents if d is not None)
        return results

    def store_bytes(self, data: bytes) -> StoredFile:
        """Store content already in memory (e.g. a file read for inspection)."""
        chunks: list[bytes] = []
        new = 0
        for piece in self._chunker().split_bytes(data):
            cid = chunk_id(piece)
            chunks.append(cid)
            if self._store_chunk(cid, piece):
                new += 1
        with self._seen_lock:
            self.read_bytes += len(data)
        return StoredFile(file_id(chunks), len(data), chunks, len(data), new)

    def store_files(self, paths: Iterable[Path]) -> Iterator[tuple[Path, StoredFile]]:
        """Store many files in parallel; yields results in the order given.

        Tiny files travel in batches (``store_small_files``), others one by
        one. At most ``2 x threads`` tasks are in flight, so a long list never
        holds more than that many results or open files at once.
        """
        window: list[tuple[list[Path], Future[list[StoredFile]]]] = []
        for task in self._tasks(paths):
            window.append((task, self._pool.submit(self._run_task, task)))
            if len(window) >= 2 * self.threads:
                done, future = window.pop(0)
                yield from zip(done, future.result(), strict=True)
        for done, future in window:
            yield from zip(done, future.result(), strict=True)

    def _tasks(self, paths: Iterable[Path]) -> Iterator[list[Path]]:
        small: list[Path] = []
        for path in paths:
            if _size_of(path) < self.params.min_size:
                small.append(path)
                if len(small) >= SMALL_FILE_BATCH:
                    yield small
                    small = []
            else:
                yield [path]
        if small:
            yield small

    def _run_task(self, task: list[Path]) -> list[StoredFile]:
        if len(task) == 1 and _size_of(task[0]) >= self.params.min_size:
            return [self.store_file(task[0])]
        return self.store_small_files(task)

    # --- internals -------------------------------------------------------------

    def _store_chunk(self, cid: bytes, data: bytes) -> bool:
        with self._seen_lock:
            if cid in self._seen:
                return False
        if self.writer.is_pending(cid) or self.known([cid]):
            added = False
        else:
            added = self.writer.add(cid, data)
        with self._seen_lock:
            self._seen.add(cid)
        return added

    def _chunks_of(self, path: Path) -> Iterator[bytes]:
        chunker = self._chunker()
        # Unbuffered: the chunker reads at offsets into its own window, and a
        # Python-side buffer would be allocated per file.
        with reading(path), open(path, "rb", buffering=0) as handle:
            yield from chunker.split_file(handle.fileno())

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = Chunker(self.params)
        return chunker


def _size_of(path: Path) -> int:
    with reading(path):
        return os.stat(path).st_size


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime) — what "the same file as last time" means on disk."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
