"""The catalog rebuilt from the store alone answers exactly like the original."""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from casbackup.catalog import Catalog
from casbackup.catalog.backups import replaced
from casbackup.catalog.rebuild import rebuild, stale_rebuild_files, sync
from casbackup.errors import CatalogError
from casbackup.repo.repository import ManifestStamp, Repository
from casbackup.store.local import LocalStore
from tests.helpers import snapshot_directory, write_tree

QUERIES = {
    "backups": "SELECT name, state, started_at, finished_at, hostname, tool_version, clickhouse_version, "
    "logical_bytes, read_bytes, new_bytes, new_chunks, duration_ms, manifest_digest, manifest_size, "
    "manifest_version "
    "FROM backups ORDER BY name",
    "databases": "SELECT b.name, d.position, d.name, d.engine, d.create_sql FROM backup_databases d "
    "JOIN backups b ON b.id = d.backup_id ORDER BY 1, 2",
    "tables": "SELECT b.name, t.position, t.database, t.name, t.engine, t.create_sql, t.uuid, t.has_data, "
    "t.rows, t.bytes, t.depends_on FROM backup_tables t JOIN backups b ON b.id = t.backup_id ORDER BY 1, 2",
    "parts": "SELECT b.name, t.name, p.position, p.name, p.partition_id, p.min_block, p.max_block, p.level, "
    "p.mutation, p.rows, p.bytes, p.disk, p.content_id, p.fp_rows, p.fp_hash FROM parts p "
    "JOIN backup_tables t ON t.id = p.table_id "
    "JOIN backups b ON b.id = t.backup_id ORDER BY 1, 2, 3",
    "part_files": "SELECT b.name, p.name, f.position, f.path, f.file_digest, f.size, f.mode, f.dev, f.ino, "
    "f.mtime_ns, f.ch_checksum FROM part_files f JOIN parts p ON p.id = f.part_id "
    "JOIN backup_tables t ON t.id = p.table_id JOIN backups b ON b.id = t.backup_id ORDER BY 1, 2, 3",
    "backup_files": "SELECT b.name, f.kind, f.path, f.file_digest, f.size, f.mode FROM backup_files f "
    "JOIN backups b ON b.id = f.backup_id ORDER BY 1, 2, 3",
    "files": "SELECT digest, size, chunk_count FROM files ORDER BY digest",
    "file_chunks": "SELECT file_digest, seq, chunk_digest FROM file_chunks ORDER BY 1, 2",
    "chunks": "SELECT c.digest, p.digest, c.offset, c.length, c.raw_size, c.compression "
    "FROM chunks c JOIN packs p ON p.id = c.pack_id ORDER BY 1",
    "packs": "SELECT digest, size, chunk_count, state FROM packs ORDER BY digest",
}


def dump(path: Path) -> dict[str, list[Any]]:
    with sqlite3.connect(path) as raw:
        return {name: raw.execute(sql).fetchall() for name, sql in QUERIES.items()}


def populate(repo: Repository, catalog: Catalog, tmp_path: Path) -> None:
    rng = random.Random(11)
    base = {
        f"p{i}/c{j}.bin": rng.randbytes(rng.randint(0, 400_000)) for i in range(3) for j in range(4)
    }
    write_tree(tmp_path / "day1", base)
    snapshot_directory(repo, catalog, "day-1", tmp_path / "day1", pack_size=256 << 10)
    changed = dict(base)
    changed["p1/c0.bin"] = rng.randbytes(300_000)
    changed["p9/new.bin"] = b"new" * 1000
    write_tree(tmp_path / "day2", changed)
    snapshot_directory(repo, catalog, "day-2", tmp_path / "day2", pack_size=256 << 10)


def test_rebuild_after_losing_the_catalog_gives_identical_answers(
    repo: Repository, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.sqlite"
    url = f"sqlite:///{path}"
    with Catalog.open(url, repo.id) as catalog:
        populate(repo, catalog, tmp_path)
    original = dump(path)
    assert len(original["backups"]) == 2 and len(original["packs"]) > 3
    # What a commit records is what listings show: no command takes these for replaced.
    with Catalog.open(url, repo.id) as catalog:
        assert catalog.backups.committed_stamps() == repo.list_backups()
    assert all(row[-1] for row in original["backups"])  # a version recorded for each
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    report = rebuild(repo, url)

    assert report.backups_imported == 2
    assert dump(path) == original
    assert not list(tmp_path.glob(".catalog.sqlite.rebuild-*"))


def test_rebuild_over_an_existing_catalog(repo: Repository, tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    url = f"sqlite:///{path}"
    with Catalog.open(url, repo.id) as catalog:
        populate(repo, catalog, tmp_path)
    original = dump(path)
    rebuild(repo, url)
    assert dump(path) == original


@pytest.mark.parametrize("where", ["catalog.sqlite", "catalog.sqlite-shm"])
def test_a_rebuild_that_cannot_write_names_the_path_in_the_way(
    repo: Repository, tmp_path: Path, where: str
) -> None:
    """A directory at the catalog's -shm file was reported as "cannot write
    .../catalog.sqlite: Is a directory", naming a sound file."""
    (tmp_path / where).mkdir()
    with pytest.raises(CatalogError, match=f"cannot write {tmp_path / where}: Is a directory"):
        rebuild(repo, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    assert not list(tmp_path.glob(".catalog.sqlite.rebuild-*"))


def test_rebuild_of_a_catalog_named_near_the_file_name_limit(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file was named ``.<catalog name>.rebuild-<tag>``, some 45 bytes longer than the
    catalog's name: one near 255 bytes failed with "File name too long"."""
    path = tmp_path / ("c" * 240 + ".sqlite")  # 247 bytes: the longest SQLite can journal
    url = f"sqlite:///{path}"
    with Catalog.open(url, repo.id) as catalog:
        populate(repo, catalog, tmp_path)
    original = dump(path)

    rebuild(repo, url)
    assert dump(path) == original
    assert sorted(p.name for p in tmp_path.glob(".c*")) == []

    # A rebuild killed before its rename: `clean` (stale_rebuild_files) finds what it left.
    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("casbackup.catalog.rebuild.sync", killed)
    monkeypatch.setattr("casbackup.catalog.rebuild.remove_sqlite_file", lambda _path: None)
    with pytest.raises(KeyboardInterrupt):
        rebuild(repo, url)
    left = sorted(tmp_path.glob(".c*"))
    assert left and all(len(p.name.encode()) <= 255 for p in left)
    assert stale_rebuild_files(url) == []  # its process (this one) still runs
    monkeypatch.setattr("casbackup.process.process_start", lambda _pid: None)
    assert stale_rebuild_files(url) == left
    assert dump(path) == original


def test_sync_imports_a_manifest_the_catalog_never_heard_of(
    repo: Repository, tmp_path: Path
) -> None:
    """E.g. written by another host, or committed just before the process died."""
    with Catalog.open(f"sqlite:///{tmp_path / 'a.sqlite'}", repo.id) as writer_catalog:
        populate(repo, writer_catalog, tmp_path)
    with Catalog.open(f"sqlite:///{tmp_path / 'b.sqlite'}", repo.id) as other:
        report = sync(repo, other)
        assert report.backups_imported == 2 and report.packs_indexed > 0
        assert sync(repo, other).backups_imported == 0  # idempotent
    assert dump(tmp_path / "b.sqlite") == dump(tmp_path / "a.sqlite")


def test_sync_forgets_backups_whose_manifest_is_gone(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    populate(repo, catalog, tmp_path)
    repo.delete_manifest("day-1")
    report = sync(repo, catalog)
    assert report.backups_forgotten == 1
    assert catalog.backups.committed_names() == {"day-2"}


@pytest.mark.parametrize(
    ("indexed", "listed", "differs"),
    [
        (ManifestStamp(10, "v1"), ManifestStamp(10, "v1"), False),
        (ManifestStamp(10, "v1"), ManifestStamp(11, "v1"), True),
        (ManifestStamp(10, "v1"), ManifestStamp(10, "v2"), True),  # same size, written again
        (ManifestStamp(10, None), ManifestStamp(10, "v2"), False),  # a row from before versions
        (ManifestStamp(10, None), ManifestStamp(12, "v2"), True),
        (ManifestStamp(None, None), ManifestStamp(12, "v2"), False),  # from before sizes too
        (ManifestStamp(10, "v1"), ManifestStamp(10, None), False),  # a store that gives none
    ],
)
def test_a_manifest_counts_as_replaced_only_where_what_both_know_differs(
    indexed: ManifestStamp, listed: ManifestStamp, differs: bool
) -> None:
    assert indexed.differs(listed) is differs
    assert replaced({"b": indexed}, {"b": listed}) == ({"b"} if differs else set())


@pytest.mark.parametrize("keep_times", [True, False], ids=["cp -a", "cp"])
def test_a_copied_local_repository_is_indexed_anew_at_most_once(
    repo: Repository, tmp_path: Path, keep_times: bool
) -> None:
    """A copy that keeps file times (cp -a, rsync -a) keeps every manifest's version: nothing
    is indexed again. One that does not gets new times: the first sync re-imports each
    backup, to the same rows, and the next finds nothing to do."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    with Catalog.open(url, repo.id) as catalog:
        populate(repo, catalog, tmp_path)
    original = {k: v for k, v in dump(tmp_path / "catalog.sqlite").items() if k != "backups"}
    time.sleep(0.05)  # a copy's new times differ from the originals' at any clock granularity
    shutil.copytree(
        tmp_path / "repo",
        tmp_path / "copy",
        copy_function=shutil.copy2 if keep_times else shutil.copy,
    )
    copy = Repository.open(LocalStore(tmp_path / "copy"))
    with Catalog.open(url, copy.id) as catalog:
        assert sync(copy, catalog).backups_imported == (0 if keep_times else 2)
        assert sync(copy, catalog).backups_imported == 0
        assert catalog.backups.committed_stamps() == copy.list_backups()
    again = {k: v for k, v in dump(tmp_path / "catalog.sqlite").items() if k != "backups"}
    assert again == original
