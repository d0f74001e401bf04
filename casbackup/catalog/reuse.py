"""Files stored before: skip re-reading what has not changed.

A frozen file is a hard link to the live part's file, so an unchanged file is
the very same inode night after night, and a part merely renamed by a
mutation keeps its files' inodes too. ``previous_files`` finds, for a batch
of inode identities (device, inode, size, mtime), the content a committed
backup recorded for them, with ClickHouse's checksum from that time. The
caller reuses a file only if ClickHouse's checksum still matches too: an
inode number can be reused by a new file after the old one is deleted.

Every committed backup since a file was written recorded its inode, so a
lookup across all of them costs in proportion to the backups kept: 30 kept
backups of a 20,000-file table took 10 s a night (SQLite's planner walked
every committed backup's files for each batch). The table's newest backup
is read first, once, by its own rows; only the files it does not know are
looked up by inode across all backups, where a new file finds no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from casbackup.catalog.database import CatalogDatabase
from casbackup.catalog.index import batched
from casbackup.catalog.models import COMMITTED, Backup, BackupTable, FileChunk, Part, PartFile

Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns
Record = tuple[str, bytes | None]  # file digest, ClickHouse checksum


@dataclass(frozen=True, slots=True)
class PreviousFile:
    file_id: bytes
    size: int
    ch_checksum: bytes | None
    chunks: list[bytes]


def previous_files(
    db: CatalogDatabase, identities: Sequence[Identity], table: tuple[str, str] | None = None
) -> dict[Identity, PreviousFile]:
    """The newest committed record of each identity; ``table`` (database, name) is looked in first."""
    wanted = set(identities)
    with db.read() as conn:
        matches = _in_newest_backup_of(conn, table, wanted) if table is not None else {}
        matches.update(_in_any_backup(conn, wanted - matches.keys()))
        chunk_lists: dict[str, list[bytes]] = {}
        for batch in batched(sorted({digest for digest, _ in matches.values()})):
            chunk_rows = conn.execute(
                select(FileChunk.file_digest, FileChunk.chunk_digest)
                .where(FileChunk.file_digest.in_(batch))
                .order_by(FileChunk.file_digest, FileChunk.seq)
            )
            for file_digest, chunk_digest in chunk_rows:
                chunk_lists.setdefault(file_digest, []).append(bytes.fromhex(chunk_digest))
    return {
        identity: PreviousFile(
            bytes.fromhex(digest), identity[2], checksum, chunk_lists.get(digest, [])
        )
        for identity, (digest, checksum) in matches.items()
    }


_FILE_COLUMNS = (
    PartFile.dev,
    PartFile.ino,
    PartFile.size,
    PartFile.mtime_ns,
    PartFile.file_digest,
    PartFile.ch_checksum,
)


def _in_newest_backup_of(
    conn: Connection, table: tuple[str, str], wanted: set[Identity]
) -> dict[Identity, Record]:
    """Files of the table's newest committed backup that have one of the identities."""
    database, name = table
    newest = conn.scalar(
        select(BackupTable.id)
        .join(Backup, Backup.id == BackupTable.backup_id)
        .where(
            Backup.state == COMMITTED, BackupTable.database == database, BackupTable.name == name
        )
        .order_by(Backup.id.desc())
        .limit(1)
    )
    if newest is None:
        return {}
    rows = conn.execute(
        select(*_FILE_COLUMNS)
        .join(Part, Part.id == PartFile.part_id)
        .where(Part.table_id == newest)
    )
    return {
        (dev, ino, size, mtime_ns): (digest, checksum)
        for dev, ino, size, mtime_ns, digest, checksum in rows
        if (dev, ino, size, mtime_ns) in wanted
    }


def _in_any_backup(conn: Connection, wanted: set[Identity]) -> dict[Identity, Record]:
    """The newest committed record of each identity, from any backup.

    ``dev = ? AND ino IN (...)``, one device at a time: SQLite searches the
    inode index with that, where a row-value ``(dev, ino) IN`` made it scan
    every committed backup's files instead.
    """
    matches: dict[Identity, Record] = {}
    by_device: dict[int, set[int]] = {}
    for dev, ino, _, _ in wanted:
        by_device.setdefault(dev, set()).add(ino)
    for dev, inodes in sorted(by_device.items()):
        for batch in batched(sorted(inodes), 400):
            newest = (
                select(func.max(PartFile.id))
                .join(Part, Part.id == PartFile.part_id)
                .join(BackupTable, BackupTable.id == Part.table_id)
                .join(Backup, Backup.id == BackupTable.backup_id)
                .where(Backup.state == COMMITTED, PartFile.dev == dev, PartFile.ino.in_(batch))
                .group_by(PartFile.dev, PartFile.ino, PartFile.size, PartFile.mtime_ns)
            )
            rows = conn.execute(
                select(*_FILE_COLUMNS).where(PartFile.id.in_(newest.scalar_subquery()))
            )
            for dev_, ino, size, mtime_ns, digest, checksum in rows:
                if (dev_, ino, size, mtime_ns) in wanted:
                    matches[(dev_, ino, size, mtime_ns)] = (digest, checksum)
    return matches
