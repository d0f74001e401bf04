"""Read planning: neighbours coalesce into few ranged reads, bounded in size; reads ahead are hinted."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.errors import IntegrityError
from casbackup.repo import keys, reader
from casbackup.repo.chunker import chunk_id, file_id
from casbackup.repo.manifest import FileContent
from casbackup.repo.reader import ChunkFetcher, ChunkLocation, plan_reads, preallocate, read_files
from casbackup.store.local import LocalStore
from tests.helpers import hinted_one_ahead

P1, P2 = b"\x01" * 32, b"\x02" * 32


def loc(pack: bytes, offset: int, length: int) -> ChunkLocation:
    return ChunkLocation(pack, offset, length, length, 0)


def test_neighbours_coalesce_and_gaps_split() -> None:
    locations = {
        b"a" * 32: loc(P1, 8, 100),
        b"b" * 32: loc(P1, 108, 100),  # adjacent
        b"c" * 32: loc(P1, 5_000_000, 10),  # far away
        b"d" * 32: loc(P2, 8, 50),  # other pack
    }
    reads = plan_reads(locations, max_gap=1 << 20, max_span=8 << 20)
    assert [(r.pack_id, r.start, r.end, len(r.chunks)) for r in reads] == [
        (P1, 8, 208, 2),
        (P1, 5_000_000, 5_000_010, 1),
        (P2, 8, 58, 1),
    ]


def test_span_limit_splits_long_runs() -> None:
    locations = {bytes([i]) * 32: loc(P1, 8 + i * 1000, 1000) for i in range(100)}
    reads = plan_reads(locations, max_gap=0, max_span=10_000)
    assert len(reads) == 10 and all(r.end - r.start <= 10_000 for r in reads)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10**7), st.integers(1, 5 * 10**6)), max_size=60
    ),
    st.integers(0, 2 << 20),
    st.integers(1, 16 << 20),
)
def test_every_chunk_is_served_once_inside_its_read(
    items: list[tuple[int, int, int]], gap: int, span: int
) -> None:
    locations = {
        i.to_bytes(32, "big"): loc(bytes([p]) * 32, o, n) for i, (p, o, n) in enumerate(items)
    }
    reads = plan_reads(locations, max_gap=gap, max_span=span)
    served = [cid for r in reads for cid, _ in r.chunks]
    assert sorted(served) == sorted(locations)
    for r in reads:
        for _, location in r.chunks:
            assert location.pack_id == r.pack_id
            assert r.start <= location.offset and location.offset + location.length <= r.end


class RecordingStore(LocalStore):
    """The real local store, noting which ranges were hinted and which were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[tuple[str, tuple[str, int, int]]] = []  # hints and reads, in order
        self._lock = threading.Lock()

    @property
    def hinted(self) -> list[tuple[str, int, int]]:
        return [span for kind, span in self.events if kind == "hint"]

    @property
    def read(self) -> list[tuple[str, int, int]]:
        return [span for kind, span in self.events if kind == "read"]

    def prefetch(self, key: str, offset: int, length: int) -> None:
        with self._lock:
            self.events.append(("hint", (key, offset, length)))
        super().prefetch(key, offset, length)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.events.append(("read", (key, offset, -1 if length is None else length)))
        return super().get(key, offset, length)


@pytest.mark.parametrize("threads", [1, 3])
def test_every_read_after_the_first_wave_is_hinted_once(tmp_path: Path, threads: int) -> None:
    store = RecordingStore(tmp_path / "repo")
    chunks = [os.urandom(1000 + i) for i in range(40)]
    locations: dict[bytes, ChunkLocation] = {}
    for pack_no in range(2):
        pack_id = bytes([pack_no + 1]) * 32
        offset = 0
        for data in chunks[pack_no * 20 : (pack_no + 1) * 20]:
            locations[chunk_id(data)] = ChunkLocation(pack_id, offset, len(data), len(data), 0)
            offset += len(data)
        store.put(keys.pack_key(pack_id), b"".join(chunks[pack_no * 20 : (pack_no + 1) * 20]))
    fetcher = ChunkFetcher(store, threads=threads, max_gap=0, max_span=4000)
    got: dict[bytes, bytes] = {}
    fetcher.fetch_into(locations, lambda cid, raw: got.__setitem__(cid, bytes(raw)))

    assert got == {chunk_id(data): data for data in chunks}
    planned = [
        (keys.pack_key(r.pack_id), r.start, r.end - r.start)
        for r in plan_reads(locations, max_gap=0, max_span=4000)
    ]
    assert len(planned) > 2 * threads
    assert sorted(store.read) == sorted(planned)
    assert sorted(store.hinted) == sorted(planned[threads:])
    if threads == 1:  # one worker: the order is fixed, each read hinted one read before it
        assert store.events == hinted_one_ahead(planned, "read")


def test_small_files_are_read_whole_in_memory(tmp_path: Path) -> None:
    """A chunk two files share, and one file using a chunk twice, are placed at every offset."""
    store = LocalStore(tmp_path / "repo")
    a, b, c = b"columns format version: 1\n", b"2 columns:\n", b"`id` UInt64\n"
    pack_id = b"\x05" * 32
    locations = {}
    offset = 0
    for data in (a, b, c):
        locations[chunk_id(data)] = ChunkLocation(pack_id, offset, len(data), len(data), 0)
        offset += len(data)
    store.put(keys.pack_key(pack_id), a + b + c)

    def content(*parts: bytes) -> FileContent:
        ids = [chunk_id(part) for part in parts]
        return FileContent(id=file_id(ids), size=sum(map(len, parts)), chunks=ids)

    one, other = content(a, b, c), content(c, c)
    fetcher = ChunkFetcher(store, threads=2, max_gap=0)
    assert read_files(fetcher, lambda _: locations, [one, other, one]) == {
        one.id: a + b + c,
        other.id: c + c,
    }
    del locations[chunk_id(b)]
    with pytest.raises(IntegrityError, match="1 chunks are not in the index"):
        read_files(fetcher, lambda _: locations, [one])


def test_prefetch_first_hints_the_first_wave_only(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "repo")
    pack_id = b"\x07" * 32
    locations = {
        bytes([i]) * 32: ChunkLocation(pack_id, i * 5000, 1000, 1000, 0) for i in range(10)
    }
    ChunkFetcher(store, threads=4, max_gap=0).prefetch_first(locations)
    key = keys.pack_key(pack_id)
    assert sorted(store.hinted) == [(key, i * 5000, 1000) for i in range(4)]
    assert store.read == []


def test_a_hint_for_what_is_not_there_is_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    store.put("packs/ab/cd", b"x" * 100)
    store.prefetch("packs/ab/missing", 0, 10)
    store.prefetch("packs/ab/cd", 50, 10_000)  # past the end
    assert store.get("packs/ab/cd", 50, 10) == b"x" * 10


def test_files_are_preallocated_where_the_filesystem_can(tmp_path: Path) -> None:
    size = 5 * 1024 * 1024 + 3
    fallocate = reader._libc_fallocate()
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if fallocate is None or fallocate(probe, 0, 0, 4096) != 0:
            pytest.skip(f"no fallocate(2) for {tmp_path} here")
    finally:
        os.close(probe)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        preallocate(fd, size)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    assert st.st_size == size and st.st_blocks * 512 >= size


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_without_fallocate_files_are_extended_sparsely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Older NFS and some FUSE filesystems refuse fallocate: a sparse file, no error."""

    def refusing(fd: int, mode: int, offset: int, length: int) -> int:
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(reader, "_libc_fallocate", lambda: refusing)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        preallocate(fd, 1_000_000)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    assert st.st_size == 1_000_000 and st.st_blocks == 0


def test_an_interrupted_fallocate_is_retried_and_other_errors_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = [errno.EINTR, errno.EINTR, 0, errno.ENOSPC]

    def flaky(fd: int, mode: int, offset: int, length: int) -> int:
        code = results.pop(0)
        ctypes.set_errno(code)
        return -1 if code else 0

    monkeypatch.setattr(reader, "_libc_fallocate", lambda: flaky)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        preallocate(fd, 10)
        assert results == [errno.ENOSPC]
        with pytest.raises(OSError, match="No space left on device"):
            preallocate(fd, 10)
    finally:
        os.close(fd)


def test_a_restored_file_never_gets_setuid_setgid_sticky_or_world_writable(
    tmp_path: Path,
) -> None:
    """A manifest's mode is untrusted: 0o6777 made restored part files setuid and setgid,
    and writable by anyone in ClickHouse's data directory."""
    store = LocalStore(tmp_path / "repo")
    data, pack_id = b"`id` UInt64\n", b"\x06" * 32
    store.put(keys.pack_key(pack_id), data)
    locations = {chunk_id(data): ChunkLocation(pack_id, 0, len(data), len(data), 0)}
    content = FileContent(id=file_id([chunk_id(data)]), size=len(data), chunks=[chunk_id(data)])
    targets = [reader.FileTarget(tmp_path / "f", content, 0o6777)]
    reader.write_files(ChunkFetcher(store, threads=1), lambda _: locations, targets)
    assert (tmp_path / "f").read_bytes() == data
    assert (tmp_path / "f").stat().st_mode & 0o7777 == 0o775
