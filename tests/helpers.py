"""Shared test helpers that are not fixtures."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from casbackup.catalog import Catalog
from casbackup.repo.manifest import Database, Manifest, Part, PartFile, Table
from casbackup.repo.reader import ChunkFetcher, FileTarget, write_files
from casbackup.repo.repository import Repository
from casbackup.restore import RestoreService
from casbackup.snapshot import SnapshotWriter

# What RestoreService._stage_parts returns: each part and its temporary directory.
StagedParts = list[tuple[Part, Path]]

Step = TypeVar("Step")


def hinted_one_ahead(steps: Sequence[Step], done: str) -> list[tuple[str, Step]]:
    """The order of events when each step's successor is hinted just before the step is done."""
    events: list[tuple[str, Step]] = []
    for index, step in enumerate(steps):
        if index + 1 < len(steps):
            events.append(("hint", steps[index + 1]))
        events.append((done, step))
    return events


def after_staging(monkeypatch: pytest.MonkeyPatch, change: Callable[[StagedParts], None]) -> None:
    """Restore stages parts as usual, then ``change`` alters them before anything checks them."""
    stage = RestoreService._stage_parts

    def staged_then_changed(self: RestoreService, *args: Any) -> StagedParts:
        staged = stage(self, *args)
        change(staged)
        return staged

    monkeypatch.setattr(RestoreService, "_stage_parts", staged_then_changed)


@contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Nothing can be created in or removed from ``directory`` meanwhile.

    Root ignores mode bits, so as root the directory is made immutable instead.
    """
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o700)


def flip_byte(path: Path, index: int, mask: int = 0x01) -> None:
    """Change one byte of a file in place: same size, other content."""
    data = bytearray(path.read_bytes())
    data[index] ^= mask
    path.write_bytes(bytes(data))


def snapshot_directory(
    repo: Repository, catalog: Catalog, name: str, root: Path, *, pack_size: int = 1 << 20
) -> Manifest:
    """Back up a directory as one table whose parts are its sub-directories."""
    with SnapshotWriter(repo, catalog, name, pack_size=pack_size) as snap:
        parts = []
        for position, part_dir in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
            paths = sorted(p for p in part_dir.rglob("*") if p.is_file())
            files = []
            for path, stored in snap.archiver.store_files(paths):
                snap.add_file(stored)
                st = path.stat()
                files.append(
                    PartFile(
                        path=path.relative_to(part_dir).as_posix(),
                        file_id=stored.file_id,
                        size=stored.size,
                        mode=st.st_mode & 0o777,
                        dev=st.st_dev,
                        ino=st.st_ino,
                        mtime_ns=st.st_mtime_ns,
                    )
                )
            parts.append(
                Part(
                    name=part_dir.name,
                    partition_id="all",
                    min_block=position + 1,
                    max_block=position + 1,
                    level=0,
                    rows=len(files),
                    bytes=sum(f.size for f in files),
                    files=files,
                )
            )
        table = Table(
            database="db",
            name="t",
            engine="MergeTree",
            create_sql="CREATE TABLE db.t (x UInt8) ENGINE = MergeTree ORDER BY x",
            has_data=True,
            rows=sum(p.rows for p in parts),
            bytes=sum(p.bytes for p in parts),
            parts=parts,
        )
        database = Database(
            name="db", engine="Atomic", create_sql="CREATE DATABASE db ENGINE = Atomic"
        )
        return snap.commit([database], [table], clickhouse_version="test")


def small_backups(root: Path, work: Path, names: Sequence[str]) -> str:
    """One small backup per name in the repository at ``root`` (catalog where the CLI keeps it).

    For tests of the repository layer through the CLI that need committed
    backups but no ClickHouse. Returns the repository id.
    """
    from casbackup.store.local import LocalStore

    repo = Repository.open(LocalStore(root))
    with Catalog.open(f"sqlite:///{root / 'catalog.sqlite'}", repo.id) as catalog:
        for name in names:
            write_tree(work / name / "all_1_1_0", {"data.bin": name.encode() * 1000})
            snapshot_directory(repo, catalog, name, work / name)
    return repo.id


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tree_contents(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def file_modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): os.stat(p).st_mode & 0o777
        for p in root.rglob("*")
        if p.is_file()
    }


def restore_manifest(
    repo: Repository, catalog: Catalog, manifest: Manifest, target: Path
) -> dict[str, bytes]:
    """Write every part file of a backup under ``target/<part>/``; returns what is there then."""
    table = manifest.file_table()
    targets = [
        FileTarget(target / part.name / pf.path, table[pf.file_id], pf.mode)
        for t in manifest.tables
        for part in t.parts
        for pf in part.files
    ]
    write_files(ChunkFetcher(repo.store, threads=3), catalog.index.locate, targets)
    return tree_contents(target)
