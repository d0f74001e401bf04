"""Turning new chunks into uploaded packs.

Three stages, each with its own small thread pool, so that one big file keeps
both cores of a small host busy (blake3, zstd and file I/O release the GIL):

1. the caller (a file-reading thread) hands over a chunk the index does not
   know; it is marked pending at once;
2. a compression pool compresses it and appends it to the open pack;
3. a full pack is sealed and uploaded by an upload pool, and the catalog is
   told (``on_pack_stored``) before its chunks stop being pending.

Memory is bounded by semaphores: at most ``max_compressing`` chunks (each at
most the maximum chunk size) wait for compression and ``max_in_flight`` sealed
packs wait for upload, so memory stays at about
``(max_in_flight + 1) x pack_size + max_compressing x max chunk``.

Dedupe checks ask ``is_pending`` before asking the catalog, and a chunk leaves
the pending set only after ``on_pack_stored`` returned, so no chunk is ever
invisible to both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from casbackup.repo import keys
from casbackup.repo.compression import ChunkCompressor
from casbackup.repo.pack import PackBuilder, PackEntry
from casbackup.store.base import ObjectStore

MiB = 1024 * 1024
DEFAULT_PACK_SIZE = 32 * MiB

PackStored = Callable[[bytes, int, list[PackEntry]], None]


@dataclass
class WriteStats:
    new_chunks: int = 0
    new_raw_bytes: int = 0
    packs: int = 0
    pack_bytes: int = 0


class ChunkWriter:
    def __init__(
        self,
        store: ObjectStore,
        compressor: ChunkCompressor,
        on_pack_stored: PackStored,
        *,
        pack_size: int = DEFAULT_PACK_SIZE,
        compress_threads: int = 2,
        upload_threads: int = 2,
        max_in_flight: int = 3,
        avoid: frozenset[bytes] = frozenset(),  # pack ids never to (re-)create: condemned ones
    ) -> None:
        self._avoid = avoid
        self._store = store
        self._compressor = compressor
        self._on_pack_stored = on_pack_stored
        self._pack_size = pack_size
        self._lock = threading.Lock()
        self._builder = PackBuilder()
        self._pending: set[bytes] = set()
        self._compress_slots = threading.BoundedSemaphore(2 * compress_threads)
        self._upload_slots = threading.BoundedSemaphore(max_in_flight)
        self._compressing: set[Future[None]] = set()
        self._uploads: list[Future[None]] = []
        self._compress_pool = ThreadPoolExecutor(
            compress_threads, thread_name_prefix="casbackup-zstd"
        )
        self._upload_pool = ThreadPoolExecutor(
            upload_threads, thread_name_prefix="casbackup-upload"
        )
        self._failure: BaseException | None = None
        self.stats = WriteStats()

    def is_pending(self, chunk_id: bytes) -> bool:
        with self._lock:
            return chunk_id in self._pending

    def add(self, chunk_id: bytes, data: bytes) -> bool:
        """Queue a chunk for storing unless it is already pending; True when it was new."""
        self._raise_failure()
        with self._lock:
            if chunk_id in self._pending:
                return False
            self._pending.add(chunk_id)
            self.stats.new_chunks += 1
            self.stats.new_raw_bytes += len(data)
        self._compress_slots.acquire()
        try:
            future = self._compress_pool.submit(self._compress_and_append, chunk_id, data)
        except BaseException:
            self._compress_slots.release()
            raise
        with self._lock:
            self._compressing.add(future)
        future.add_done_callback(self._compressed)
        return True

    def flush(self) -> None:
        """Seal the open pack and wait until every pack is stored and recorded."""
        while True:
            with self._lock:
                waiting = list(self._compressing)
            if not waiting:
                break
            for future in waiting:
                future.exception()  # wait; failures surface through _failure
        self._raise_failure()
        with self._lock:
            sealed, self._builder = self._builder, PackBuilder()
        if len(sealed):
            self._upload(sealed)
        for future in list(self._uploads):
            future.exception()
        self._uploads.clear()
        self._raise_failure()

    def close(self) -> None:
        """Stop the pools; chunks not yet flushed are abandoned (they were never committed)."""
        self._compress_pool.shutdown(wait=True, cancel_futures=True)
        self._upload_pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------

    def _compressed(self, future: Future[None]) -> None:
        self._compress_slots.release()
        with self._lock:
            self._compressing.discard(future)

    def _compress_and_append(self, chunk_id: bytes, data: bytes) -> None:
        try:
            kind, blob = self._compressor.compress(data)
            sealed: PackBuilder | None = None
            with self._lock:
                self._builder.add(chunk_id, blob, len(data), kind)
                if self._builder.size >= self._pack_size:
                    sealed, self._builder = self._builder, PackBuilder()
            if sealed is not None:
                self._upload(sealed)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _upload(self, builder: PackBuilder) -> None:
        self._upload_slots.acquire()
        try:
            future = self._upload_pool.submit(self._seal_and_store, builder)
        except BaseException:
            self._upload_slots.release()
            raise
        with self._lock:
            self._uploads.append(future)

    def _seal_and_store(self, builder: PackBuilder) -> None:
        try:
            sealed = builder.finish(self._avoid)
            self._store.put_pieces(keys.pack_key(sealed.pack_id), sealed.pieces)
            self._on_pack_stored(sealed.pack_id, sealed.size, sealed.entries)
            with self._lock:
                self.stats.packs += 1
                self.stats.pack_bytes += sealed.size
                self._pending.difference_update(e.chunk_id for e in sealed.entries)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._upload_slots.release()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
