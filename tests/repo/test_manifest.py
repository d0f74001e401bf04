"""Manifest encoding: round trip, integrity, and refusal of hostile content."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import ManifestCorrupt, UnsafePath, UnsupportedFormat
from casbackup.repo import manifest as codec
from casbackup.repo.chunker import file_id
from casbackup.repo.manifest import (
    Database,
    FileContent,
    Manifest,
    Part,
    PartFile,
    PartFingerprint,
    Table,
)

digests = st.binary(min_size=32, max_size=32)
names = st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)
path_components = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
).filter(lambda c: c not in (".", ".."))
fingerprints = st.none() | st.builds(
    PartFingerprint,
    rows=st.integers(0, 2**63 - 1),
    hash=st.integers(0, 2**64 - 1),
    expression_id=st.none() | st.from_regex(r"\A[0-9a-f]{32}\Z"),
)
part_names = st.from_regex(r"\A[0-9]{6}_[0-9]{1,4}_[0-9]{1,4}_[0-9](_[0-9]{1,3})?\Z")


@st.composite
def file_contents(draw: Any) -> FileContent:
    chunks = draw(st.lists(digests, max_size=6))
    size = draw(st.integers(len(chunks), len(chunks) * 1000)) if chunks else 0
    return FileContent(id=file_id(chunks), size=size, chunks=chunks)


@st.composite
def manifests(draw: Any) -> Manifest:
    contents = draw(st.lists(file_contents(), max_size=8, unique_by=lambda f: f.id))
    tables = []
    for t in range(draw(st.integers(0, 3))):
        parts = []
        for pname in draw(st.lists(part_names, max_size=3, unique=True)):
            paths = draw(
                st.lists(
                    st.lists(path_components, min_size=1, max_size=2).map("/".join),
                    max_size=4,
                    unique=True,
                )
            )
            if (
                any(p in {q.rsplit("/", 1)[0] for q in paths if "/" in q} for p in paths)
                or not contents
            ):
                paths = []
            files = [
                PartFile(
                    path=p,
                    file_id=(c := draw(st.sampled_from(contents))).id,
                    size=c.size,
                    mode=draw(st.integers(0, 0o777)),
                    dev=draw(st.integers(0, 2**40)),
                    ino=draw(st.integers(0, 2**40)),
                    mtime_ns=draw(st.integers(0, 2**62)),
                    ch_checksum=draw(st.none() | st.binary(min_size=16, max_size=16)),
                )
                for p in paths
            ]
            parts.append(
                Part(
                    name=pname,
                    partition_id=pname.split("_")[0],
                    min_block=1,
                    max_block=2,
                    level=0,
                    rows=draw(st.integers(0, 10**9)),
                    bytes=sum(f.size for f in files),
                    files=files,
                    fingerprint=draw(fingerprints),
                )
            )
        tables.append(
            Table(
                database=draw(names),
                name=f"t{t}",
                engine="MergeTree",
                create_sql=draw(st.text(max_size=200)),
                uuid=None,
                has_data=bool(parts),
                depends_on=[("a", "b")],
                parts=parts,
            )
        )
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Manifest(
        name="b-1",
        repository_id="r" * 32,
        started_at=when,
        finished_at=when,
        hostname="h",
        tool_version="1",
        clickhouse_version="26.9",
        databases=[Database(name="db", engine="Atomic", create_sql="CREATE DATABASE db")],
        tables=tables,
        files=contents,
    )


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_roundtrip(manifest: Manifest) -> None:
    assert codec.decode(codec.encode(manifest), manifest.name) == manifest


@settings(max_examples=60, deadline=None)
@given(st.lists(manifests(), min_size=1, max_size=3))
def test_decoding_with_a_memo_gives_the_same_manifests(found: list[Manifest]) -> None:
    memo = codec.DecodeMemo()
    for manifest in found:
        data = codec.encode(manifest)
        assert codec.decode(data, manifest.name, memo) == manifest
        again = codec.decode(data, manifest.name, memo)
        assert again == manifest
        # A part or file content seen before is the object validated then.
        first = codec.decode(data, manifest.name, memo)
        assert all(a is b for a, b in zip(first.files, again.files, strict=True))
        assert all(
            a is b
            for s, t in zip(first.tables, again.tables, strict=True)
            for a, b in zip(s.parts, t.parts, strict=True)
        )


Decode = Callable[[bytes, str], Manifest]


@pytest.fixture(params=["alone", "with a memo"])
def decode(request: pytest.FixtureRequest) -> Decode:
    """``codec.decode``, or through a memo that already holds the valid sample's parts and files.

    A document refused alone must be refused alike (same error) through a
    memo, also when all but one field of it was accepted before.
    """
    if request.param == "alone":
        return codec.decode
    memo = codec.DecodeMemo()
    codec.decode(codec.encode(_sample()), "b-1", memo)
    assert memo.parts and memo.files
    return lambda data, name: codec.decode(data, name, memo)


def _raw_doc(manifest: Manifest) -> dict[str, Any]:
    data = codec.encode(manifest)
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[40:]), raw=False)


def _encode_doc(doc: dict[str, Any]) -> bytes:
    import blake3

    body = zstandard.ZstdCompressor().compress(msgpack.packb(doc, use_bin_type=True))
    return codec.MAGIC + blake3.blake3(body).digest() + body


def _sample() -> Manifest:
    chunks = [b"\x01" * 32]
    content = FileContent(id=file_id(chunks), size=10, chunks=chunks)
    part = Part(
        name="202401_1_1_0",
        partition_id="202401",
        min_block=1,
        max_block=1,
        level=0,
        rows=1,
        bytes=10,
        files=[PartFile(path="data.bin", file_id=content.id, size=10)],
    )
    table = Table(
        database="db",
        name="t",
        engine="MergeTree",
        create_sql="CREATE TABLE db.t",
        has_data=True,
        parts=[part],
    )
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return Manifest(
        name="b-1",
        repository_id="r" * 32,
        started_at=when,
        finished_at=when,
        hostname="h",
        tool_version="1",
        clickhouse_version="",
        databases=[],
        tables=[table],
        files=[content],
    )


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./x", "x/.", "a\x00b", ""]
)
def test_unsafe_paths_refused(path: str, decode: Decode) -> None:
    doc = _raw_doc(_sample())
    doc["tables"][0]["parts"][0]["files"][0]["path"] = path
    with pytest.raises(UnsafePath):
        decode(_encode_doc(doc), "b-1")


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "attaching_1_1_1_0", "deleting_x", "", "tmp_merge_1", "-", "--1_1_1_0"]
)
def test_unsafe_part_names_refused(name: str, decode: Decode) -> None:
    doc = _raw_doc(_sample())
    doc["tables"][0]["parts"][0]["name"] = name
    with pytest.raises(UnsafePath):
        decode(_encode_doc(doc), "b-1")


def test_flipped_byte_detected(decode: Decode) -> None:
    data = bytearray(codec.encode(_sample()))
    data[60] ^= 1
    with pytest.raises(ManifestCorrupt, match="digest mismatch"):
        decode(bytes(data), "b-1")


@pytest.mark.parametrize("data", [b"", b"CASMANI1", b"garbage" * 20])
def test_not_a_manifest(data: bytes, decode: Decode) -> None:
    with pytest.raises(ManifestCorrupt):
        decode(data, "b-1")


def test_newer_version_refused_with_advice(decode: Decode) -> None:
    doc = _raw_doc(_sample())
    doc["version"] = 2
    with pytest.raises(UnsupportedFormat, match="version 2"):
        decode(_encode_doc(doc), "b-1")


def _files(doc: dict[str, Any]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = doc["tables"][0]["parts"][0]["files"]
    return files


def _rows_beyond_64_bits(doc: dict[str, Any]) -> None:
    doc["tables"][0]["rows"] = 2**63 - 1
    doc["tables"].append({**copy.deepcopy(doc["tables"][0]), "name": "other", "parts": []})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["files"][0].__setitem__("size", 5),
            "file id missing from the file table or size",
        ),
        (lambda d: d["files"][0].__setitem__("chunks", [b"\x02" * 32]), "file id does not match"),
        (lambda d: d["files"][0].__setitem__("id", b"\x00" * 31), "digest must be 32 bytes"),
        (lambda d: d.__setitem__("tables", "nope"), "tables"),
        (lambda d: d["tables"][0]["parts"][0].__setitem__("rows", -1), "rows"),
        (lambda d: d.__setitem__("surprise", 1), "surprise"),
        (lambda d: d.__setitem__("name", "other"), "names itself"),
        (lambda d: d["files"][0].__setitem__("size", 10**12), "impossible"),
        (
            lambda d: d["tables"][0]["parts"][0].__setitem__(
                "fingerprint", {"rows": 1, "hash": 1, "expression_id": "0'; DROP TABLE x"}
            ),
            "expression_id",
        ),
        # Each path safe alone, but together a restore would meet its own file.
        (lambda d: _files(d).append(dict(_files(d)[0])), "path 'data.bin' listed twice"),
        (
            lambda d: _files(d).append({**_files(d)[0], "path": "data.bin/x"}),
            "'data.bin' is a file and the directory of 'data.bin/x'",
        ),
        (
            lambda d: d["tables"][0]["parts"].append(copy.deepcopy(d["tables"][0]["parts"][0])),
            "a part name appears twice",
        ),
        (lambda d: d["tables"].append(copy.deepcopy(d["tables"][0])), "a table is listed twice"),
        # Each count fits a catalog's 64-bit integer, but SQLite's sum of them does not:
        # `list` and `forget` failed on every backup with "integer overflow".
        (_rows_beyond_64_bits, "rows of the tables add up to more than"),
    ],
)
def test_inconsistent_documents_refused(mutate: Any, message: str, decode: Decode) -> None:
    doc = _raw_doc(_sample())
    mutate(doc)
    with pytest.raises(ManifestCorrupt, match=message) as raised:
        decode(_encode_doc(doc), "b-1")
    # Not "corrupt: : Value error, a table is listed twice".
    assert ": :" not in raised.value.message and "Value error" not in raised.value.message


def test_part_files_adding_up_beyond_64_bits_are_refused(
    decode: Decode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog sums a backup's part file sizes in SQL (index_gaps, at every gc).

    Each size fits 2^63, but one file content referenced by many part files
    adds up past it: SQLite's "integer overflow" then failed every gc (exit
    17, advising a rebuild that re-imported the same manifest). A hostile
    manifest needs a chunk id repeated some 2^20 times (a file of 2^44 bytes,
    which compresses to nothing) and 2^19 part files; a larger chunk bound
    lets one chunk stand for them here.
    """
    monkeypatch.setattr(codec, "MAX_CHUNK_SIZE", 2**62)
    doc = _raw_doc(_sample())
    doc["files"][0]["size"] = 2**61
    entry = {**_files(doc)[0], "size": 2**61}
    doc["tables"][0]["parts"][0]["files"] = [{**entry, "path": p} for p in "abcd"]
    with pytest.raises(ManifestCorrupt, match="sizes of the part files add up to more than"):
        decode(_encode_doc(doc), "b-1")
    doc["tables"][0]["parts"][0]["files"].pop()  # 3 * 2^61: fits
    assert decode(_encode_doc(doc), "b-1").tables[0].parts[0].files[0].size == 2**61


@pytest.mark.parametrize("logical_bytes", [0, 9, 11, 2**62])
def test_a_logical_size_that_disagrees_with_the_parts_is_read_and_not_relied_on(
    logical_bytes: int, decode: Decode
) -> None:
    """stats.logical_bytes is a report of the writer's, never checked against the parts:
    refusing a manifest for it would make a backup whose parts are sound unrestorable, so
    readers accept it, and what depends on the size takes the parts' sum."""
    doc = _raw_doc(_sample())
    doc["stats"]["logical_bytes"] = logical_bytes
    manifest = decode(_encode_doc(doc), "b-1")
    assert manifest.stats.logical_bytes == logical_bytes
    assert manifest.part_file_bytes() == 10 == _sample().part_file_bytes()


def test_non_map_top_level(decode: Decode) -> None:
    import blake3

    body = zstandard.ZstdCompressor().compress(msgpack.packb([1, 2, 3]))
    with pytest.raises(ManifestCorrupt, match="not a map"):
        decode(codec.MAGIC + blake3.blake3(body).digest() + body, "b-1")


# --- hostile sizes: memory bounded by the document, not by what follows it ----------


def _with_body(body: bytes) -> bytes:
    import blake3

    return codec.MAGIC + blake3.blake3(body).digest() + body


def _zstd_of(*pieces: bytes, repeat_last: int = 1) -> bytes:
    """One zstd frame of the pieces, the last repeated (cheaply: it is compressed in a stream)."""
    writer = zstandard.ZstdCompressor(level=3).compressobj()
    body = b"".join(writer.compress(p) for p in pieces[:-1])
    for _ in range(repeat_last):
        body += writer.compress(pieces[-1])
    return body + writer.flush()


def _peak_allocation(action: Any) -> int:
    """Bytes allocated at the peak while ``action`` runs (Python allocators, bytes objects included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_trailing_zeros_are_refused_without_decompressing_them(decode: Decode) -> None:
    """A valid document then 2 GiB of zeros: ~70 KB stored, and 4 GB of memory before the fix."""
    document = msgpack.packb(_raw_doc(_sample()), use_bin_type=True)
    data = _with_body(_zstd_of(document, bytes(8 << 20), repeat_last=256))
    assert len(data) < 200_000

    def refuse() -> None:
        with pytest.raises(ManifestCorrupt, match="extra data after the document"):
            decode(data, "b-1")

    assert _peak_allocation(refuse) < 8 << 20


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0" * 3, msgpack.packb({"version": 1})])
def test_any_trailing_data_is_refused(extra: bytes, decode: Decode) -> None:
    document = msgpack.packb(_raw_doc(_sample()), use_bin_type=True)
    with pytest.raises(ManifestCorrupt, match="extra data after the document"):
        decode(_with_body(_zstd_of(document + extra)), "b-1")


def test_a_truncated_document_is_refused(decode: Decode) -> None:
    document = msgpack.packb(_raw_doc(_sample()), use_bin_type=True)
    with pytest.raises(ManifestCorrupt, match="truncated document"):
        decode(_with_body(_zstd_of(document[:-5])), "b-1")


def test_a_document_beyond_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, decode: Decode
) -> None:
    data = codec.encode(_sample())
    monkeypatch.setattr(codec, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ManifestCorrupt, match="decompresses to more than the 100-byte limit"):
        decode(data, "b-1")


def test_a_manifest_readers_would_refuse_is_never_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from casbackup.errors import RepositoryError

    monkeypatch.setattr(codec, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(RepositoryError, match="more than the 100 readers accept"):
        codec.encode(_sample())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        # An array header announcing 2^32 - 1 items (the list is allocated up front).
        (b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10, "exceeds max_array_len"),
        # A string of 17 MiB of one byte: compresses to almost nothing.
        (b"\xdb" + (17 << 20).to_bytes(4, "big") + b"a" * (17 << 20), "exceeds max_str_len"),
        (b"\xc6" + (1 << 20).to_bytes(4, "big") + b"\x00" * (1 << 20), "exceeds max_bin_len"),
        (b"\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
    ],
)
def test_msgpack_lengths_are_bounded(document: bytes, message: str, decode: Decode) -> None:
    with pytest.raises(ManifestCorrupt, match=message):
        decode(_with_body(_zstd_of(document)), "b-1")
