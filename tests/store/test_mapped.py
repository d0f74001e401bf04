"""Pack ranges as views of the page cache: the same bytes as a read, or a read where mapping is not safe."""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import ChunkCorrupt, ObjectNotFound, PackCorrupt
from casbackup.repo import keys
from casbackup.repo.chunker import chunk_id
from casbackup.repo.reader import ChunkFetcher, ChunkLocation
from casbackup.store import mapped
from casbackup.store.base import MapsRanges
from casbackup.store.local import LocalStore

MiB = 1024 * 1024
SIZE = 3 * MiB + 12_345  # not a multiple of the page size
KEY = "packs/ab/abcdef"

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="ranges are mapped on Linux only")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStore, bytes]]:
    store = LocalStore(tmp_path_factory.mktemp("mapped") / "repo")
    data = os.urandom(SIZE)
    store.put(KEY, data)
    yield store, data


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, SIZE + 10), length=st.integers(0, SIZE + 10))
def test_a_view_holds_what_get_returns(
    stored: tuple[LocalStore, bytes], offset: int, length: int
) -> None:
    store, data = stored
    view = store.view(KEY, offset, length)
    assert bytes(view) == store.get(KEY, offset, length) == data[offset : offset + length]


@linux_only
def test_large_ranges_are_mapped_small_ones_copied(stored: tuple[LocalStore, bytes]) -> None:
    store, data = stored
    large = store.view(KEY, 4097, 2 * MiB)  # an offset inside a page
    assert isinstance(large, memoryview) and isinstance(large.obj, mmap.mmap)
    assert large.readonly and large == data[4097 : 4097 + 2 * MiB]
    assert isinstance(store.view(KEY, 0, 64 * 1024), bytes)


@linux_only
def test_the_end_of_the_object_shortens_a_mapped_range(stored: tuple[LocalStore, bytes]) -> None:
    store, data = stored
    tail = store.view(KEY, SIZE - 2 * MiB, 4 * MiB)
    assert isinstance(tail, memoryview) and tail == data[SIZE - 2 * MiB :]
    assert store.view(KEY, SIZE, MiB) == b""


def test_a_missing_object_is_reported_as_by_get(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    with pytest.raises(ObjectNotFound):
        store.view("packs/ab/missing", 0, 2 * MiB)


@linux_only
def test_pages_that_cannot_be_populated_are_read_instead(
    stored: tuple[LocalStore, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel refusing the advice (EINVAL, as before Linux 5.14, or EFAULT/EIO for
    pages it cannot read) must never leave a mapping behind that could SIGBUS."""
    store, data = stored
    monkeypatch.setattr(mapped, "MADV_POPULATE_READ", 0x7FFF)  # advice no kernel knows
    view = store.view(KEY, 0, 2 * MiB)
    assert isinstance(view, bytes) and view == data[: 2 * MiB]


def test_the_local_store_offers_views() -> None:
    assert isinstance(LocalStore("/nonexistent"), MapsRanges)


def _pack(store: LocalStore, chunks: list[bytes]) -> dict[bytes, ChunkLocation]:
    pack_id = b"\x09" * 32
    locations, offset = {}, 0
    for data in chunks:
        locations[chunk_id(data)] = ChunkLocation(pack_id, offset, len(data), len(data), 0)
        offset += len(data)
    store.put(keys.pack_key(pack_id), b"".join(chunks))
    return locations


@linux_only
def test_raw_chunks_reach_the_sink_as_views_of_the_mapping(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    chunks = [os.urandom(MiB + 1000 * i) for i in range(6)]  # reads of two chunks, all mapped
    locations = _pack(store, chunks)
    got: dict[bytes, bytes] = {}
    kinds: set[type] = set()

    def sink(cid: bytes, raw: bytes | memoryview) -> None:
        kinds.add(type(raw.obj) if isinstance(raw, memoryview) else type(raw))
        got[cid] = bytes(raw)

    ChunkFetcher(store, threads=2, max_gap=0, max_span=3 * MiB).fetch_into(locations, sink)
    assert got == {chunk_id(data): data for data in chunks}
    assert kinds == {mmap.mmap}


def test_a_damaged_or_truncated_pack_is_still_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    chunks = [os.urandom(700_000 + i) for i in range(4)]
    locations = _pack(store, chunks)
    path = store.root / keys.pack_key(b"\x09" * 32)
    content = bytearray(path.read_bytes())
    content[800_000] ^= 0xFF  # inside the second chunk
    path.write_bytes(content)
    fetcher = ChunkFetcher(store, threads=1, max_gap=0, max_span=4 * MiB)
    with pytest.raises(ChunkCorrupt):
        fetcher.fetch_into(locations, lambda cid, raw: None)
    os.truncate(path, 2_000_000)
    with pytest.raises(PackCorrupt, match="truncated"):
        fetcher.fetch_into(locations, lambda cid, raw: None)
