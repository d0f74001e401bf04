"""Files stored before: skip re-reading what has not changed.

A frozen file is a hard link to the live part's file, so an unchanged file is
the very same inode night after night, and a part merely renamed by a
mutation keeps its files' inodes too. ``previous_files`` finds, for a batch
of inode identities (device, inode, size, mtime), the content a committed
backup recorded for them, with ClickHouse's checksum from that time. The
caller reuses a file only if ClickHouse's checksum still matches too: an
inode number can be reused by a new file after the old one is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, tuple_

from casbackup.catalog.database import CatalogDatabase
from casbackup.catalog.index import batched
from casbackup.catalog.models import COMMITTED, Backup, BackupTable, FileChunk, Part, PartFile

Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True, slots=True)
class PreviousFile:
    file_id: bytes
    size: int
    ch_checksum: bytes | None
    chunks: list[bytes]


def previous_files(
    db: CatalogDatabase, identities: Sequence[Identity]
) -> dict[Identity, PreviousFile]:
    wanted = set(identities)
    matches: dict[Identity, tuple[str, bytes | None]] = {}
    with db.read() as conn:
        for batch in batched(sorted({(dev, ino) for dev, ino, _, _ in wanted}), 400):
            rows = conn.execute(
                select(
                    PartFile.dev,
                    PartFile.ino,
                    PartFile.size,
                    PartFile.mtime_ns,
                    PartFile.file_digest,
                    PartFile.ch_checksum,
                )
                .join(Part, Part.id == PartFile.part_id)
                .join(BackupTable, BackupTable.id == Part.table_id)
                .join(Backup, Backup.id == BackupTable.backup_id)
                .where(Backup.state == COMMITTED, tuple_(PartFile.dev, PartFile.ino).in_(batch))
                .order_by(Backup.id.desc())
            )
            for dev, ino, size, mtime_ns, digest, checksum in rows:
                identity = (dev, ino, size, mtime_ns)
                if identity in wanted and identity not in matches:
                    matches[identity] = (digest, checksum)
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
