"""Pack write/read and trailer parsing, including hostile trailers."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.errors import PackCorrupt, PackMissing
from casbackup.repo import keys
from casbackup.repo import pack as packfmt
from casbackup.repo.chunker import chunk_id
from casbackup.repo.compression import ChunkCompressor, Compression, decompress
from casbackup.repo.pack import FOOTER_SIZE, MAGIC, PackBuilder, PackEntry, parse_pack
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore


def build(
    chunks: list[bytes], avoid: frozenset[bytes] = frozenset()
) -> tuple[bytes, bytes, list[PackEntry]]:
    builder = PackBuilder()
    compressor = ChunkCompressor()
    for data in chunks:
        kind, blob = compressor.compress(data)
        builder.add(chunk_id(data), blob, len(data), kind)
    sealed = builder.finish(avoid)
    data = b"".join(sealed.pieces)
    assert sealed.size == len(data)
    return sealed.pack_id, data, sealed.entries


@given(st.lists(st.binary(max_size=5000), max_size=30))
def test_pack_roundtrip(chunks: list[bytes]) -> None:
    pack_id, data, entries = build(chunks)
    assert pack_id == blake3.blake3(data).digest()
    assert data.startswith(MAGIC)
    parsed = parse_pack(data, "p")
    assert parsed == entries
    unique = {chunk_id(c): c for c in chunks}
    assert len(parsed) == len(unique)
    for e in parsed:
        raw = decompress(e.compression, data[e.offset : e.end], e.raw_size)
        assert raw == unique[e.chunk_id]


@given(st.lists(st.binary(max_size=5000), max_size=10), st.integers(1, 3))
def test_pack_never_named_like_a_condemned_one(chunks: list[bytes], condemned: int) -> None:
    """The same chunks again, with their pack (and its padded successors) condemned: a new name.

    A byte-identical pack would share the condemned pack's name, and so its
    fate: gc deletes it while the new backup relies on it.
    """
    avoid: set[bytes] = set()
    for _ in range(condemned):
        pack_id, _data, _entries = build(chunks, frozenset(avoid))
        avoid.add(pack_id)
    pack_id, data, entries = build(chunks, frozenset(avoid))
    assert pack_id not in avoid and pack_id == blake3.blake3(data).digest()
    assert parse_pack(data, "p") == entries
    unique = {chunk_id(c): c for c in chunks}
    for e in entries:
        assert decompress(e.compression, data[e.offset : e.end], e.raw_size) == unique[e.chunk_id]


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=400))
def test_trailer_via_ranged_reads(
    chunks: list[bytes],
) -> None:
    # Up to 400 entries: crosses the 16 KiB probe, exercising the second read.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(LocalStore(tmp))
        pack_id, data, entries = build(chunks)
        repo.store.put(keys.pack_key(pack_id), data)
        assert repo.read_trailer(pack_id) == entries
        assert repo.read_trailer(pack_id, len(data)) == entries


def test_empty_pack_is_valid() -> None:
    _, data, entries = build([])
    assert entries == [] and parse_pack(data, "p") == []


def _with_trailer(trailer: bytes, body: bytes = b"x" * 100) -> bytes:
    footer = struct.pack("<I32s8s", len(trailer), blake3.blake3(trailer).digest(), b"CASPEND1")
    return MAGIC + body + trailer + footer


def _entry(offset: int, length: int, raw: int, kind: int = 0) -> bytes:
    return struct.pack("<32sQIIB", b"\x01" * 32, offset, length, raw, kind)


@pytest.mark.parametrize(
    "trailer, message",
    [
        (struct.pack("<I", 1) + _entry(8, 5000, 5000), "outside the data area"),
        (struct.pack("<I", 1) + _entry(2, 10, 10), "outside the data area"),
        (struct.pack("<I", 2) + _entry(8, 50, 50) + _entry(20, 10, 10), "overlaps"),
        (struct.pack("<I", 1) + _entry(8, 10, 10, kind=9), "unknown compression"),
        (struct.pack("<I", 1) + _entry(8, 10, 1 << 30, kind=1), "raw size"),
        (struct.pack("<I", 1) + _entry(8, 10, 12, kind=0), "raw entry"),
        (struct.pack("<I", 5) + _entry(8, 10, 10), "not 5 entries"),
        (struct.pack("<I", 1 << 31), "not 2147483648 entries"),
    ],
)
def test_hostile_trailers_are_refused(trailer: bytes, message: str) -> None:
    with pytest.raises(PackCorrupt, match=message):
        parse_pack(_with_trailer(trailer), "p")


def test_trailer_length_beyond_pack_is_refused() -> None:
    data = MAGIC + b"x" * 10 + struct.pack("<I32s8s", 10**9, b"\x00" * 32, b"CASPEND1")
    with pytest.raises(PackCorrupt, match="does not fit"):
        parse_pack(data, "p")


def test_flipped_trailer_byte_is_detected() -> None:
    _, data, _ = build([b"a" * 100, b"b" * 200])
    damaged = bytearray(data)
    damaged[-FOOTER_SIZE - 3] ^= 0x40
    with pytest.raises(PackCorrupt, match="trailer digest"):
        parse_pack(bytes(damaged), "p")


@pytest.mark.parametrize("keep", [0, 5, 30, FOOTER_SIZE - 1, FOOTER_SIZE + 2])
def test_truncated_pack(tmp_path: Path, keep: int) -> None:
    repo = Repository.init(LocalStore(tmp_path))
    pack_id, data, _ = build([b"a" * 100, b"b" * 200])
    repo.store.put(keys.pack_key(pack_id), data[:keep] if keep else data[: len(data) - 10])
    with pytest.raises(PackCorrupt):
        repo.read_trailer(pack_id)


def test_missing_pack(tmp_path: Path) -> None:
    repo = Repository.init(LocalStore(tmp_path))
    with pytest.raises(PackMissing):
        repo.read_trailer(b"\x42" * 32)


def test_compression_flag_recorded() -> None:
    text = b"compressible " * 10_000
    _, data, entries = build([text])
    assert entries[0].compression is Compression.ZSTD
    assert entries[0].length < entries[0].raw_size == len(text)
    assert packfmt.parse_pack(data, "p")[0].compression is Compression.ZSTD


def test_readers_accept_the_largest_pack_a_writer_may_make() -> None:
    """The largest pack_size_mb, overshot by one compressed chunk of the largest size."""
    from pydantic import ValidationError

    from casbackup.config import RepositorySettings
    from casbackup.repo.chunker import MAX_CHUNK_SIZE
    from casbackup.repo.pack import MAX_PACK_BYTES

    largest = 512
    RepositorySettings(pack_size_mb=largest)
    with pytest.raises(ValidationError):
        RepositorySettings(pack_size_mb=largest + 1)
    overshoot = MAX_CHUNK_SIZE + MAX_CHUNK_SIZE // 128 + 4096  # zstd's bound, the entry, slack
    assert largest * 1024 * 1024 + overshoot < MAX_PACK_BYTES
