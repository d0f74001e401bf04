"""Small or sparse hostile objects in the store cost bounded memory, and a one-line error.

Each object is made by hand where a real one belongs: a sparse file that
stats at gigabytes but costs no disk, or a few kilobytes of zstd that
decompress to gigabytes. Memory is measured with tracemalloc (every bytes
object a read or a decompression makes is counted), in this process.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode, RepositoryError
from casbackup.repo import manifest as codec
from casbackup.repo.repository import Repository
from casbackup.store.base import ObjectStore
from casbackup.store.local import LocalStore
from tests.cli.test_failures import _backed_up_table, one_line_error
from tests.cli.test_older_releases import rewrite_manifest
from tests.engines import ServerEngine
from tests.helpers import small_backups

GiB = 1024**3
# What a command may allocate here at most: the CLI, the catalog and one
# small manifest, far below the gigabytes each object would cost unbounded.
BUDGET = 64 << 20


def peak_allocation(action: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def sparse(path: Path, head: bytes, size: int) -> None:
    """A file of ``size`` bytes that starts with ``head``; the rest is a hole, no disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


@pytest.fixture
def backups(cli: Any, tmp_path: Path) -> Path:
    """A repository at tmp_path/repo with backups b1 and b2; returns its directory."""
    assert cli(None, "init").code == 0
    small_backups(tmp_path / "repo", tmp_path, ["b1", "b2"])
    return tmp_path / "repo"


def test_a_sparse_5_gb_manifest_is_refused_unread(cli: Any, backups: Path) -> None:
    """Beyond the largest manifest a writer may commit (4 GiB document): refused from its size."""
    sparse(backups / "manifests" / "b3", codec.MAGIC, 5 * GiB)

    listed, peak = peak_allocation(lambda: cli(None, "list", "--json"))
    assert peak < BUDGET
    assert listed.code == ExitCode.WARNING, listed.stderr
    assert [b["name"] for b in listed.json()] == ["b1", "b2"]
    assert "backup b3 not indexed: manifests/b3 holds more than" in listed.stderr

    shown, peak = peak_allocation(lambda: cli(None, "show", "b3"))
    assert peak < BUDGET
    assert shown.code == ExitCode.INTEGRITY
    one_line_error(shown.stderr)
    assert "manifests/b3 holds more than" in shown.stderr and "manifest" in shown.stderr


def test_a_manifest_of_trailing_zeros_costs_only_its_document(cli: Any, backups: Path) -> None:
    """A valid document, then 2 GiB of zeros in the same zstd frame: about 70 KB stored."""
    import blake3
    import zstandard

    stored = (backups / "manifests" / "b1").read_bytes()
    document = zstandard.ZstdDecompressor().decompress(stored[len(codec.MAGIC) + 32 :])
    writer = zstandard.ZstdCompressor(level=3).compressobj()
    body = writer.compress(document)
    zeros = bytes(8 << 20)
    for _ in range(256):
        body += writer.compress(zeros)
    body += writer.flush()
    (backups / "manifests" / "b3").write_bytes(codec.MAGIC + blake3.blake3(body).digest() + body)

    shown, peak = peak_allocation(lambda: cli(None, "show", "b3"))
    assert peak < BUDGET
    assert shown.code == ExitCode.INTEGRITY
    one_line_error(shown.stderr)
    assert "manifest of backup b3 is corrupt: msgpack: extra data after the document" in (
        shown.stderr
    )


def oversized_manifest_is_refused(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """On any store: the size is asked first, and the ranged read never goes past the limit."""
    repo = Repository.init(store)
    store.put("manifests/big", b"x" * 2000)
    monkeypatch.setattr(codec, "MAX_MANIFEST_OBJECT_BYTES", 1000, raising=False)
    with pytest.raises(RepositoryError, match="manifests/big holds more than 1000 bytes"):
        repo.read_manifest("big")

    # Grown between the size check and the read (a local file is not
    # immutable to everyone): the read still stops at the limit.
    stat = store.stat
    monkeypatch.setattr(store, "stat", lambda key: stat("config"))
    with pytest.raises(RepositoryError):
        repo.read_manifest("big")


def test_an_oversized_manifest_is_refused_on_a_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oversized_manifest_is_refused(LocalStore(tmp_path / "repo"), monkeypatch)


def test_an_oversized_manifest_is_refused_on_s3(
    s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    oversized_manifest_is_refused(s3_server.store(s3_bucket, "r"), monkeypatch)


def test_a_sparse_file_is_cheap_to_make(tmp_path: Path) -> None:
    """The tests above rely on holes: a 3 GB sparse file must not take 3 GB of disk."""
    sparse(tmp_path / "f", b"x", 3 * GiB)
    assert os.stat(tmp_path / "f").st_blocks * 512 < 1 << 20


# --- small JSON objects: config, locks, marks -------------------------------------------


def test_a_2_gb_config_is_an_integrity_error_read_no_further(cli: Any, backups: Path) -> None:
    config = backups / "config"
    sparse(config, config.read_bytes(), 2 * GiB)

    listed, peak = peak_allocation(lambda: cli(None, "list"))
    assert peak < BUDGET
    assert listed.code == ExitCode.INTEGRITY
    one_line_error(listed.stderr)
    assert "config holds more than 65536 bytes, more than any repository config" in listed.stderr


@pytest.mark.parametrize("key", ["backup-ab", "exclusive-gc"])
def test_a_2_gb_lock_object_is_an_unreadable_stale_lock(cli: Any, backups: Path, key: str) -> None:
    """As any garbage lock object: shown as unreadable and stale, broken by gc, removed by unlock."""
    sparse(backups / "locks" / key, b'{"kind": "backup"', 2 * GiB)

    shown, peak = peak_allocation(lambda: cli(None, "locks", "--json"))
    assert peak < BUDGET
    assert shown.code == 0, shown.stderr
    assert [(r["key"], r["kind"], r["stale"]) for r in shown.json()] == [
        (f"locks/{key}", "unreadable", True)
    ]

    collected, peak = peak_allocation(lambda: cli(None, "gc", "--min-age", "0s"))
    assert peak < BUDGET
    assert collected.code == 0, collected.stderr

    if (backups / "locks" / key).exists():
        unlocked, peak = peak_allocation(lambda: cli(None, "unlock"))
        assert peak < BUDGET
        assert unlocked.code == 0, unlocked.stderr
    assert not (backups / "locks" / key).exists()


def test_an_oversized_mark_stops_gc_with_an_integrity_error(
    cli: Any, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mark cannot be ignored (a backup could rely on packs it condemns): gc stops, naming it."""
    from casbackup.repo import marks

    monkeypatch.setattr(marks, "MAX_MARK_BYTES", 1000, raising=False)
    mark = backups / "condemned" / "1700000000-abcdef"
    mark.parent.mkdir()
    mark.write_text('{"created_at": 1700000000.0, "leases": [], "packs": [' + '"x",' * 400 + "]}")

    collected = cli(None, "gc", "--min-age", "0s")
    assert collected.code == ExitCode.INTEGRITY
    one_line_error(collected.stderr)
    assert "condemned/1700000000-abcdef holds more than 1000 bytes" in collected.stderr


# --- packs ------------------------------------------------------------------------------


def test_a_sparse_2_gb_pack_is_left_out_unread(cli: Any, backups: Path) -> None:
    """Its footer could claim a trailer of gigabytes: the size alone refuses it."""
    name = "ab" * 32
    sparse(backups / "packs" / "ab" / name, b"CASPACK1", 2 * GiB)

    synced, peak = peak_allocation(lambda: cli(None, "catalog", "sync"))
    assert peak < BUDGET
    assert synced.code == ExitCode.WARNING, synced.stderr
    assert f"pack {name} not indexed: pack {name} is corrupt: 2147483648 bytes, more than any" in (
        synced.stderr
    )


def test_verify_reads_no_pack_beyond_the_largest_casbackup_writes(
    cli: Any, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limit lowered below this repository's packs, each is a problem, read no further."""
    from casbackup.repo import repository

    monkeypatch.setattr(repository, "MAX_PACK_BYTES", 100, raising=True)
    verified = cli(None, "verify", "--read-data", "--json")
    assert verified.code == ExitCode.VERIFY_FAILED
    problems = verified.json()["problems"]
    assert problems and all("holds more than 100 bytes" in p["detail"] for p in problems)

    # gc's repack (the other whole-pack read): tests/test_gc.py, with the same limit.


def test_control_characters_from_a_manifest_reach_no_terminal(
    server_engine: ServerEngine, cli: Any, tmp_path: Path
) -> None:
    """A manifest is untrusted: its strings are printed escaped, errors stay one line.

    show's header, its --parts lines and its 'also:' line print them too."""
    db = "hostile_version"
    _backed_up_table(server_engine, tmp_path, db, 10)  # backup b in tmp_path / "repo"

    def hostile(doc: dict[str, Any]) -> None:
        doc["clickhouse_version"] = "99.1\n\x1b[2Jcasbackup: error: fake"
        doc["hostname"] = "db1\x1b]0;title\x07"
        doc["tables"][0]["name"] = "t\x1b[2J"
        doc["partitions"] = ["2024\x1b]0;title\x07"]

    rewrite_manifest(tmp_path / "repo", "b", hostile)
    assert cli(server_engine, "catalog", "rebuild").code == 0
    refused = cli(server_engine, "restore", "b", "--as", f"{db}:{db}_copy")
    assert refused.code == ExitCode.CONFLICT
    assert refused.stderr.count("\n") == 1 and "\x1b" not in refused.stderr
    assert "ClickHouse 99.1\\n\\x1b[2Jcasbackup: error: fake, newer" in refused.stderr
    shown = cli(server_engine, "show", "b", "--parts")
    assert shown.code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "host db1\\x1b]0;title\\x07" in shown.stdout
    assert f"{db}.t\\x1b[2J  " in shown.stdout
    assert "only partitions 2024\\x1b]0;title\\x07" in shown.stdout
    server_engine.sql(f"DROP DATABASE {db}")
