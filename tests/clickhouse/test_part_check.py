"""ClickHouse's file checksums computed here, proved against parts both engines wrote."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.clickhouse.checksums import read_checksums
from casbackup.clickhouse.part_check import BLOCK, ClickHouseFileHash, check_part, file_hash
from tests.clickhouse.schema import create_realistic
from tests.engines import Engine
from tests.helpers import flip_byte


def active_parts(engine: Engine, db: str) -> list[Path]:
    rows = engine.sql(
        f"SELECT path FROM system.parts WHERE database = '{db}' AND active AND rows > 0"
    )
    return [Path(path) for (path,) in rows]


def copy_part(engine: Engine, db: str, tmp_path: Path) -> Path:
    """A copy of the biggest wide part, to damage without touching the server's."""
    table = "events_wide" if engine.modern else "events"
    [(path,)] = engine.sql(
        f"SELECT path FROM system.parts WHERE database = '{db}' AND table = '{table}' AND active "
        "ORDER BY bytes_on_disk DESC LIMIT 1"
    )
    return Path(shutil.copytree(path, tmp_path / "part"))


def varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def checksums_v3(entries: dict[str, tuple[int, bytes]]) -> bytes:
    """checksums.txt format version 3 (uncompressed records), as ClickHouse writes it."""
    body = varuint(len(entries))
    for name, (size, digest) in sorted(entries.items()):
        raw = name.encode()
        body += varuint(len(raw)) + raw + varuint(size) + digest + b"\x00"
    return b"checksums format version: 3\n" + body


def test_every_file_of_every_part_matches_what_clickhouse_recorded(
    engine: Engine, dbname: str
) -> None:
    """Wide, compact, projection, skip index, LowCardinality, Nullable: one hash for all."""
    create_realistic(engine, dbname)
    parts = active_parts(engine, dbname)
    assert len(parts) >= 4
    for path in parts:
        found = check_part(path)
        assert found.problems == [] and found.has_checksums, path
        assert found.files >= 3
    if engine.modern:  # the projection's files, through its own checksums.txt
        assert any((p / "by_d.proj" / "checksums.txt").exists() for p in parts)


def test_a_changed_byte_a_wrong_size_and_a_missing_file_are_each_found(
    engine: Engine, dbname: str, tmp_path: Path
) -> None:
    create_realistic(engine, dbname, rows=20_000)
    part = copy_part(engine, dbname, tmp_path)
    bins = sorted(part.glob("*.bin"), key=lambda p: p.stat().st_size)
    flip_byte(bins[-1], bins[-1].stat().st_size // 2, 0x40)
    with bins[0].open("ab") as grown:
        grown.write(b"\x00")
    (part / "primary.idx" if (part / "primary.idx").exists() else part / "primary.cidx").unlink()
    problems = check_part(part).problems
    assert len(problems) == 3, problems
    assert f"{bins[-1].name} does not match its checksum in checksums.txt" in problems
    assert any(p.startswith(f"{bins[0].name} has ") for p in problems)
    assert any(p.startswith("primary.") and p.endswith(" is missing") for p in problems)


def test_hostile_names_in_checksums_txt_are_findings_and_never_opened(tmp_path: Path) -> None:
    part = tmp_path / "part"
    part.mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(b"x" * 10)
    digest = file_hash(outside)
    (part / "checksums.txt").write_bytes(
        checksums_v3({"../secret": (10, digest), "a/../../secret": (10, digest), "..": (0, digest)})
    )
    found = check_part(part)
    assert found.files == 0 and len(found.problems) == 3
    assert all(p.startswith("checksums.txt lists an unsafe name") for p in found.problems)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    part = tmp_path / "part"
    part.mkdir()
    (tmp_path / "target.bin").write_bytes(b"y" * 3000)
    os.symlink(tmp_path / "target.bin", part / "x.bin")
    (part / "checksums.txt").write_bytes(
        checksums_v3({"x.bin": (3000, file_hash(tmp_path / "target.bin"))})
    )
    assert check_part(part).problems == ["x.bin is not a regular file"]


def test_a_part_without_checksums_is_reported_as_unchecked(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"z")
    found = check_part(tmp_path)
    assert not found.has_checksums and found.problems == [] and found.files == 0


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=5 * BLOCK + 17),
    cuts=st.lists(st.integers(min_value=0, max_value=5 * BLOCK + 17), max_size=8),
)
def test_the_hash_does_not_depend_on_how_the_file_is_fed(data: bytes, cuts: list[int]) -> None:
    whole = ClickHouseFileHash()
    whole.update(data)
    pieces = ClickHouseFileHash()
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        pieces.update(data[start:end])
    assert pieces.digest() == whole.digest()
    assert whole.digest() == whole.digest()  # digest leaves the state as it was


def test_blocks_are_chained_with_the_previous_hash_as_seed() -> None:
    """Two files sharing a last block but not a first hash differently; an empty file is zero."""
    assert ClickHouseFileHash().digest() == bytes(16)
    a, b = ClickHouseFileHash(), ClickHouseFileHash()
    a.update(b"a" * BLOCK + b"tail")
    b.update(b"b" * BLOCK + b"tail")
    assert a.digest() != b.digest()


def test_hashing_keeps_no_memory_behind() -> None:
    """The binding never releases a buffer it is given: only new bytes objects may reach it."""
    import tracemalloc

    data = bytearray(os.urandom(4 * 1024 * 1024))
    ClickHouseFileHash().update(data)  # warm-up: caches, interned objects
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        hasher = ClickHouseFileHash()
        hasher.update(memoryview(data)[1:])
        hasher.digest()
        del hasher
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024  # a leaked view per 2 KiB block would be about 300 KB here
    data.extend(b"x")  # and no export of the caller's buffer is left behind


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, "00000000000000000000000000000000"),
        (1, "b27aedfc610eafe36fcbe5d4205dae62"),
        (16, "48ddfb05246b74b1cf9fa822150e49da"),
        (2047, "3fc9ea3eba4c369ea388c0171e74cba5"),
        (2048, "d259b8777a616a8165f7b06e63ffd2d8"),
        (2049, "89b410f6ca75afe0d4500d221b4a7cef"),
        (4096, "9c70ea81d58ec01a6b21eb14afb9f6cc"),
        (5000, "97cd6279dae822f3324bf44995840f24"),
    ],
)
def test_pinned_hashes_at_block_edges(length: int, expected: str) -> None:
    """Pinned from this code once it matched both engines' parts: any change shows here first."""
    hasher = ClickHouseFileHash()
    hasher.update(bytes(i * 7 % 251 for i in range(length)))
    assert hasher.digest().hex() == expected


def test_a_file_clickhouse_hashed() -> None:
    """count.txt of a 100,000-row part, with the checksum chdb wrote for it."""
    hasher = ClickHouseFileHash()
    hasher.update(b"100000")
    assert hasher.digest().hex() == "064c3696e16df95da570008a8665a0bd"


def part_listing(tmp_path: Path, entries: dict[str, bytes], listed: dict[str, int]) -> Path:
    """A part directory with these files, whose checksums.txt lists ``listed`` (name: size)."""
    part = tmp_path / "part"
    part.mkdir()
    for name, content in entries.items():
        (part / name).write_bytes(content)
    digests = {n: file_hash(part / n) if n in entries else bytes(16) for n in listed}
    (part / "checksums.txt").write_bytes(
        checksums_v3({n: (size, digests[n]) for n, size in listed.items()})
    )
    return part


def test_names_that_are_not_clickhouse_file_names_are_refused(tmp_path: Path) -> None:
    long = "é" * 200 + ".proj"  # 200 characters, 400 bytes: too long for a file name
    part = part_listing(
        tmp_path, {}, {"bad\nname\x1b[31m.bin": 1, long: 0, "sp ace.bin": 1, "ok%28%29.bin": 0}
    )
    (part / "ok%28%29.bin").write_bytes(b"")
    found = check_part(part)
    assert len(found.problems) == 3 and found.files == 1
    assert all(p.startswith("checksums.txt lists an unsafe name") for p in found.problems)
    assert all("\n" not in p and "\x1b" not in p for p in found.problems)


def test_an_unusable_checksums_txt_is_a_finding_not_a_pass(tmp_path: Path) -> None:
    part = tmp_path / "part"
    part.mkdir()
    (part / "checksums.txt").write_bytes(b"checksums format version: 2\n2 files:\n")
    assert check_part(part).problems == [
        "checksums.txt is not usable: unsupported checksums format version 2"
    ]
    (part / "checksums.txt").write_bytes(checksums_v3({}))
    assert check_part(part).problems == ["checksums.txt lists no files"]
    (part / "checksums.txt").unlink()
    os.mkfifo(part / "checksums.txt")  # opened without blocking, refused
    found = check_part(part)
    assert found.has_checksums and found.problems[0].startswith("checksums.txt is not usable")


def test_a_directory_under_a_file_name_is_not_a_file(tmp_path: Path) -> None:
    part = part_listing(tmp_path, {}, {"x.bin": 0})
    (part / "x.bin").mkdir()
    assert check_part(part).problems == ["x.bin is not a regular file"]


def test_a_damaged_projection_is_found(engine: Engine, dbname: str, tmp_path: Path) -> None:
    if not engine.modern:
        pytest.skip("18.16 has no projections")
    create_realistic(engine, dbname, rows=20_000)
    part = copy_part(engine, dbname, tmp_path)
    projection = part / "by_d.proj"
    victim = max(projection.glob("*.bin"), key=lambda p: p.stat().st_size)
    flip_byte(victim, -1)
    assert check_part(part).problems == [
        f"by_d.proj/{victim.name} does not match its checksum in checksums.txt"
    ]
    flip_byte(victim, -1)  # repaired
    listed = read_checksums(projection / "checksums.txt")
    assert listed is not None
    del listed[victim.name]  # a projection that lists fewer files than its part says it holds
    (projection / "checksums.txt").write_bytes(
        checksums_v3({n: (c.size, c.hash) for n, c in listed.items()})
    )
    assert check_part(part).problems == ["by_d.proj holds other files than its part lists"]
    (projection / "checksums.txt").unlink()
    assert check_part(part).problems == ["by_d.proj/checksums.txt is missing"]
