"""previous_files: the newest committed record of a file's inode, by table first, then by inode."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from casbackup.catalog import Catalog
from casbackup.catalog.reuse import Identity, previous_files
from casbackup.repo.manifest import Manifest
from casbackup.repo.repository import Repository
from tests.helpers import snapshot_directory, write_tree

TABLE = ("db", "t")  # the table snapshot_directory records
HINTS = [TABLE, None, ("db", "another")]


def identity(path: Path) -> Identity:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def recorded(manifest: Manifest, part: str, path: str) -> bytes:
    (table,) = manifest.tables
    return next(f.file_id for p in table.parts if p.name == part for f in p.files if f.path == path)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """New content, same inode, size and mtime: only ClickHouse's checksum would tell."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("hint", HINTS)
def test_the_newest_committed_record_is_found(
    repo: Repository, catalog: Catalog, tmp_path: Path, hint: tuple[str, str] | None
) -> None:
    src = tmp_path / "src"
    write_tree(src / "all_1_1_0", {"a.bin": b"a" * 5000, "b.bin": b"b" * 3000})
    write_tree(src / "all_2_2_0", {"c.bin": b"c" * 4000})
    snapshot_directory(repo, catalog, "b1", src)
    a = src / "all_1_1_0" / "a.bin"
    rewrite_in_place(a, b"A" * 5000)
    b2 = snapshot_directory(repo, catalog, "b2", src)
    files = sorted(p for p in src.rglob("*.bin"))

    found = previous_files(catalog.db, [identity(p) for p in files], hint)

    assert set(found) == {identity(p) for p in files}
    assert found[identity(a)].file_id == recorded(b2, "all_1_1_0", "a.bin")
    assert found[identity(a)].chunks  # with its chunk list


@pytest.mark.parametrize("hint", HINTS)
def test_a_file_only_an_older_backup_recorded_is_found(
    repo: Repository, catalog: Catalog, tmp_path: Path, hint: tuple[str, str] | None
) -> None:
    """The table's newest backup lacks the part (a partial backup): the lookup by inode finds it."""
    src = tmp_path / "src"
    write_tree(src / "all_1_1_0", {"a.bin": b"a" * 5000})
    write_tree(src / "all_2_2_0", {"c.bin": b"c" * 4000})
    b1 = snapshot_directory(repo, catalog, "b1", src)
    only_first = tmp_path / "only_first" / "all_1_1_0"
    only_first.mkdir(parents=True)
    os.link(src / "all_1_1_0" / "a.bin", only_first / "a.bin")  # the same inode, as FREEZE makes
    snapshot_directory(repo, catalog, "b2", only_first.parent)
    c = src / "all_2_2_0" / "c.bin"

    found = previous_files(catalog.db, [identity(c), identity(only_first / "a.bin")], hint)

    assert found[identity(c)].file_id == recorded(b1, "all_2_2_0", "c.bin")
    assert identity(only_first / "a.bin") in found


@pytest.mark.parametrize("hint", HINTS)
def test_records_of_a_backup_that_did_not_commit_are_not_used(
    repo: Repository,
    catalog: Catalog,
    catalog_url: str,
    tmp_path: Path,
    hint: tuple[str, str] | None,
) -> None:
    src = tmp_path / "src"
    write_tree(src / "all_1_1_0", {"a.bin": b"a" * 5000})
    b1 = snapshot_directory(repo, catalog, "b1", src)
    a = src / "all_1_1_0" / "a.bin"
    rewrite_in_place(a, b"A" * 5000)
    snapshot_directory(repo, catalog, "b2", src)
    with sqlite3.connect(catalog_url.removeprefix("sqlite:///")) as raw:
        raw.execute("UPDATE backups SET state = 'running' WHERE name = 'b2'")

    found = previous_files(catalog.db, [identity(a), (1, 2, 3, 4)], hint)

    assert list(found) == [identity(a)]  # and nothing for an inode never recorded
    assert found[identity(a)].file_id == recorded(b1, "all_1_1_0", "a.bin")
