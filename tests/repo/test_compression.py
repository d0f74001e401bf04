from __future__ import annotations

import os

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from casbackup.errors import ChunkCorrupt
from casbackup.repo.compression import ChunkCompressor, Compression, decompress


@given(st.binary(max_size=300_000))
def test_roundtrip(data: bytes) -> None:
    kind, blob = ChunkCompressor().compress(data)
    assert decompress(kind, blob, len(data)) == data
    assert len(blob) <= len(data)


def test_random_data_is_stored_raw() -> None:
    data = os.urandom(1 << 20)
    assert ChunkCompressor().compress(data)[0] is Compression.NONE


def test_text_is_compressed() -> None:
    data = b"".join(
        b"user %d clicked https://example.com/p/%d\n" % (i, i % 977) for i in range(30_000)
    )
    kind, blob = ChunkCompressor().compress(data)
    assert kind is Compression.ZSTD and len(blob) < len(data) // 4


def test_decompress_refuses_size_mismatch() -> None:
    blob = zstandard.ZstdCompressor().compress(b"a" * 1000)
    with pytest.raises(ChunkCorrupt, match="expected 999"):
        decompress(Compression.ZSTD, blob, 999)
    with pytest.raises(ChunkCorrupt):
        decompress(Compression.ZSTD, blob, 1001)


def test_decompression_bomb_is_bounded() -> None:
    """A frame that expands to 1 GiB is rejected after reading raw_size + 1 bytes."""
    bomb = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(
        b"\x00" * (64 << 20)
    )
    with pytest.raises(ChunkCorrupt):
        decompress(Compression.ZSTD, bomb, 100)


def test_garbage_is_chunk_corrupt() -> None:
    with pytest.raises(ChunkCorrupt, match="zstd"):
        decompress(Compression.ZSTD, b"not zstd at all", 10)
    with pytest.raises(ChunkCorrupt, match="unknown compression"):
        decompress(7, b"x", 1)
