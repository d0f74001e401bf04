"""Backups in the catalog: a running backup's row, its contents, and committed history.

The manifest in the store is the truth about which backups exist. The catalog
row goes through ``running`` (contents recorded before the manifest is written,
so a concurrent gc already sees what the backup references) to ``committed``
(after the manifest is in the store). A crash between the two, or a catalog
that fails the second update, leaves a ``running`` row whose manifest exists;
the next sync (catalog.rebuild) replaces it with the manifest's contents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.orm import Session, selectinload

from casbackup.catalog.database import CatalogDatabase
from casbackup.catalog.index import batched, record_files
from casbackup.catalog.models import (
    COMMITTED,
    RUNNING,
    Backup,
    BackupDatabase,
    BackupFile,
    BackupTable,
    Part,
    PartFile,
)
from casbackup.errors import BackupExists, BackupNotFound
from casbackup.repo.manifest import Manifest, part_content_id
from casbackup.repo.repository import ManifestStamp


@dataclass(frozen=True)
class BackupSummary:
    name: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    hostname: str
    tables: int
    rows: int
    logical_bytes: int
    new_bytes: int
    read_bytes: int
    duration_ms: int

    @property
    def dedupe_ratio(self) -> float:
        """Logical bytes per byte this backup added to the store."""
        return self.logical_bytes / self.new_bytes if self.new_bytes else float("inf")


def previous_fingerprints(
    db: CatalogDatabase, content_ids: set[bytes], expression_id: str
) -> dict[bytes, tuple[int, int]]:
    """Fingerprints recorded for parts of these contents, by this row expression, by any earlier backup."""
    found: dict[bytes, tuple[int, int]] = {}
    with db.read() as conn:
        for batch in batched(sorted(c.hex() for c in content_ids)):
            rows = conn.execute(
                select(Part.content_id, Part.fp_rows, Part.fp_hash).where(
                    Part.content_id.in_(batch),
                    Part.fp_rows.is_not(None),
                    Part.fp_expression == expression_id,
                )
            )
            for content_id, rows_, hash_ in rows:
                if content_id is not None and rows_ is not None and hash_ is not None:
                    found[bytes.fromhex(content_id)] = (int(rows_), int(hash_))
    return found


class BackupRecords:
    def __init__(self, db: CatalogDatabase) -> None:
        self.db = db

    # --- a backup's life -------------------------------------------------------

    def start(
        self,
        name: str,
        started_at: datetime,
        hostname: str,
        tool_version: str,
        run_id: str | None = None,
    ) -> int:
        try:
            with self.db.write() as conn:
                result = conn.execute(
                    insert(Backup)
                    .returning(Backup.id)
                    .values(
                        name=name,
                        state=RUNNING,
                        started_at=started_at,
                        hostname=hostname,
                        tool_version=tool_version,
                        logical_bytes=0,
                        read_bytes=0,
                        new_bytes=0,
                        new_chunks=0,
                        duration_ms=0,
                        clickhouse_version="",
                        run_id=run_id,
                    )
                )
                return int(result.scalar_one())
        except SQLIntegrityError:
            raise BackupExists(name=name) from None

    def record_contents(self, backup_id: int, manifest: Manifest) -> None:
        with self.db.write() as conn:
            _insert_contents(conn, backup_id, manifest)

    def mark_committed(self, backup_id: int, manifest: Manifest, digest: bytes, size: int) -> None:
        """The manifest is in the store; its version follows (``record_version``)."""
        with self.db.write() as conn:
            conn.execute(
                update(Backup)
                .where(Backup.id == backup_id)
                .values(
                    state=COMMITTED,
                    manifest_digest=digest.hex(),
                    manifest_size=size,
                    **_stats_columns(manifest),
                )
            )

    def record_version(self, backup_id: int, version: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(Backup).where(Backup.id == backup_id).values(manifest_version=version)
            )

    def abandon(self, backup_id: int) -> None:
        """Forget a backup that will never commit; its packs become garbage for gc."""
        with self.db.write() as conn:
            conn.execute(delete(Backup).where(Backup.id == backup_id, Backup.state == RUNNING))

    def import_manifest(
        self, conn: Connection, manifest: Manifest, digest: bytes, stamp: ManifestStamp
    ) -> None:
        """Index a committed manifest found in the store (rebuild, reconcile)."""
        conn.execute(delete(Backup).where(Backup.name == manifest.name))
        result = conn.execute(
            insert(Backup)
            .returning(Backup.id)
            .values(
                name=manifest.name,
                state=COMMITTED,
                started_at=manifest.started_at,
                hostname=manifest.hostname,
                tool_version=manifest.tool_version,
                manifest_digest=digest.hex(),
                manifest_size=stamp.size,
                manifest_version=stamp.version,
                **_stats_columns(manifest),
            )
        )
        _insert_contents(conn, int(result.scalar_one()), manifest)

    # --- queries ---------------------------------------------------------------

    def summaries(self, states: Sequence[str] = (COMMITTED,)) -> list[BackupSummary]:
        with self.db.read() as conn:
            table_stats = (
                select(
                    BackupTable.backup_id,
                    func.count().label("tables"),
                    func.coalesce(func.sum(BackupTable.rows), 0).label("rows"),
                )
                .group_by(BackupTable.backup_id)
                .subquery()
            )
            rows = conn.execute(
                select(Backup, table_stats.c.tables, table_stats.c.rows)
                .outerjoin(table_stats, table_stats.c.backup_id == Backup.id)
                .where(Backup.state.in_(states))
                .order_by(Backup.started_at, Backup.id)
            )
            return [
                BackupSummary(
                    name=r.name,
                    state=r.state,
                    started_at=_utc(r.started_at),
                    finished_at=_utc(r.finished_at) if r.finished_at else None,
                    hostname=r.hostname,
                    tables=r.tables or 0,
                    rows=int(r.rows or 0),
                    logical_bytes=int(r.logical_bytes),
                    new_bytes=int(r.new_bytes),
                    read_bytes=int(r.read_bytes),
                    duration_ms=int(r.duration_ms),
                )
                for r in rows
            ]

    def committed_names(self) -> set[str]:
        with self.db.read() as conn:
            return set(conn.scalars(select(Backup.name).where(Backup.state == COMMITTED)))

    def committed_stamps(self) -> dict[str, ManifestStamp]:
        """Committed backups and the stamp of the manifest each was indexed from."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(Backup.name, Backup.manifest_size, Backup.manifest_version).where(
                    Backup.state == COMMITTED
                )
            )
            return {name: ManifestStamp(size, version) for name, size, version in rows}

    def state_of(self, name: str) -> str | None:
        with self.db.read() as conn:
            return conn.scalar(select(Backup.state).where(Backup.name == name))

    def load(self, name: str) -> Backup:
        """A committed backup with its databases, tables, parts and files loaded."""
        with self.db.errors(), Session(self.db.engine, expire_on_commit=False) as session:
            backup = session.scalar(
                select(Backup)
                .where(Backup.name == name, Backup.state == COMMITTED)
                .options(
                    selectinload(Backup.databases),
                    selectinload(Backup.tables)
                    .selectinload(BackupTable.parts)
                    .selectinload(Part.files),
                )
            )
            if backup is None:
                raise BackupNotFound(name=name)
            session.expunge_all()
            return backup


def _stats_columns(manifest: Manifest) -> dict[str, object]:
    return {
        "finished_at": manifest.finished_at,
        "clickhouse_version": manifest.clickhouse_version,
        # The parts' sum, not the stat: gc checks this backup's part file rows
        # against it (``index_gaps``). A stat above the sum stopped every gc, and
        # a rebuild, reading the same stat, could not help; one below it let
        # that many bytes of lost rows through unseen.
        "logical_bytes": manifest.part_file_bytes(),
        "read_bytes": manifest.stats.read_bytes,
        "new_bytes": manifest.stats.new_bytes,
        "new_chunks": manifest.stats.new_chunks,
        "duration_ms": manifest.stats.duration_ms,
    }


def _insert_contents(conn: Connection, backup_id: int, manifest: Manifest) -> None:
    """Insert a manifest's contents with one batched statement per table.

    ``INSERT ... RETURNING`` in parameter order hands back the ids of all parts
    at once; row by row, a table with thousands of parts took seconds.
    """
    record_files(conn, {f.id: (f.size, f.chunks) for f in manifest.files})
    server_files = [
        {
            "backup_id": backup_id,
            "kind": kind,
            "path": f.path,
            "file_digest": f.file_id.hex(),
            "size": f.size,
            "mode": f.mode,
        }
        for kind, fileset in (("access", manifest.access_files), ("config", manifest.configs))
        if fileset is not None
        for f in fileset.files
    ]
    if server_files:
        conn.execute(insert(BackupFile), server_files)
    if manifest.databases:
        conn.execute(
            insert(BackupDatabase),
            [
                {
                    "backup_id": backup_id,
                    "position": position,
                    "name": d.name,
                    "engine": d.engine,
                    "create_sql": d.create_sql,
                }
                for position, d in enumerate(manifest.databases)
            ],
        )
    if not manifest.tables:
        return
    table_ids = _insert_returning_ids(
        conn,
        BackupTable,
        [
            {
                "backup_id": backup_id,
                "position": position,
                "database": t.database,
                "name": t.name,
                "engine": t.engine,
                "create_sql": t.create_sql,
                "uuid": t.uuid,
                "has_data": t.has_data,
                "rows": t.rows,
                "bytes": t.bytes,
                "depends_on": json.dumps([list(d) for d in t.depends_on]),
            }
            for position, t in enumerate(manifest.tables)
        ],
    )
    parts = [
        (table_id, position, part)
        for table_id, t in zip(table_ids, manifest.tables, strict=True)
        for position, part in enumerate(t.parts)
    ]
    if not parts:
        return
    part_ids = _insert_returning_ids(
        conn,
        Part,
        [
            {
                "table_id": table_id,
                "position": position,
                "name": p.name,
                "partition_id": p.partition_id,
                "min_block": p.min_block,
                "max_block": p.max_block,
                "level": p.level,
                "mutation": p.mutation,
                "rows": p.rows,
                "bytes": p.bytes,
                "disk": p.disk,
                "content_id": part_content_id(p).hex(),
                "fp_rows": p.fingerprint.rows if p.fingerprint else None,
                "fp_hash": str(p.fingerprint.hash) if p.fingerprint else None,
                "fp_expression": p.fingerprint.expression_id if p.fingerprint else None,
            }
            for table_id, position, p in parts
        ],
    )
    file_rows = [
        {
            "part_id": part_id,
            "position": i,
            "path": f.path,
            "file_digest": f.file_id.hex(),
            "size": f.size,
            "mode": f.mode,
            "dev": f.dev,
            "ino": f.ino,
            "mtime_ns": f.mtime_ns,
            "ch_checksum": f.ch_checksum,
        }
        for part_id, (_, _, part) in zip(part_ids, parts, strict=True)
        for i, f in enumerate(part.files)
    ]
    for batch in batched(file_rows, 5000):
        conn.execute(insert(PartFile), batch)


def _insert_returning_ids(
    conn: Connection, model: type[BackupTable] | type[Part], rows: list[dict[str, Any]]
) -> list[int]:
    result = conn.execute(insert(model).returning(model.id, sort_by_parameter_order=True), rows)
    return [int(row[0]) for row in result]


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def out_of_step(
    indexed: Mapping[str, ManifestStamp], in_store: Mapping[str, ManifestStamp]
) -> set[str]:
    """Backups the catalog (``committed_stamps``) and the store disagree on: in one only, or replaced."""
    return (indexed.keys() ^ in_store.keys()) | replaced(indexed, in_store)


def replaced(
    indexed: Mapping[str, ManifestStamp], in_store: Mapping[str, ManifestStamp]
) -> set[str]:
    """Backups in both whose manifest in the store is not the one the catalog indexed.

    A name another host deleted and used again holds a different manifest,
    and the catalog's rows would describe the old backup's files (gc would
    free what the new one needs, restore would restore the old one). The
    manifests' sizes and store versions tell them apart (``ManifestStamp``).
    A row from before either was recorded is taken as is.
    """
    return {
        name for name in indexed.keys() & in_store.keys() if indexed[name].differs(in_store[name])
    }
