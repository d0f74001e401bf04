"""The chunk index: which chunks exist, and where each one lives.

Dedupe asks ``known`` (chunks in live packs only: a condemned pack may be
deleted by the next gc, so nothing may start depending on it). The writer calls
``record_pack`` once a pack is safely in the store. Restore asks ``locate``.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Insert, Select, bindparam, insert, select, update
from sqlalchemy.dialects import sqlite

from casbackup.catalog.database import CatalogDatabase
from casbackup.catalog.models import CONDEMNED, LIVE, Base, Chunk, File, FileChunk, Pack
from casbackup.repo.chunker import MAX_CHUNK_SIZE
from casbackup.repo.pack import MAX_PACK_BYTES, PackEntry
from casbackup.repo.reader import ChunkLocation

# SQLite allows 32766 bound parameters per statement; stay far below it.
BATCH = 900


def batched(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def insert_ignoring_duplicates(conn: Connection, model: type[Base]) -> Insert:
    """INSERT that skips rows whose key exists: shared content is indexed once."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    if dialect == "postgresql":
        # Imported here: the PostgreSQL dialect costs every process ~30 ms to load.
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(model).on_conflict_do_nothing()
    return insert(model).prefix_with("IGNORE")  # MySQL/MariaDB


class ChunkIndex:
    def __init__(self, db: CatalogDatabase) -> None:
        self.db = db
        # thread -> its lookup connection; connections of finished threads go
        # back to the pool when the next thread asks for one (thread pools come
        # and go with each backup in a long-lived process).
        self._lookup_connections: dict[threading.Thread, Any] = {}
        self._lookup_lock = threading.Lock()

    def known(self, chunk_ids: Sequence[bytes]) -> set[bytes]:
        """The subset of ``chunk_ids`` already stored in live packs.

        The hottest query of a backup (once per chunk read), so it runs on a
        per-thread DBAPI connection with plain SQL: through the ORM layer each
        call cost ~460 us of Python with the GIL held, ten times the query.
        Each statement is its own read transaction (SQLite autocommit; a
        rollback after it elsewhere), so it always sees the latest commits.
        """
        return self._digests_among(
            "SELECT c.digest FROM chunks c JOIN packs p ON p.id = c.pack_id "
            f"WHERE p.state = '{LIVE}' AND c.digest IN",
            chunk_ids,
        )

    def indexed(self, chunk_ids: Iterable[bytes]) -> set[bytes]:
        """The subset of ``chunk_ids`` located in any pack, condemned ones included.

        What a commit checks of every chunk its backup references: once per
        backup, but over all of them (~4,000 for a 4 GB table), where
        ``locate``'s rows of locations cost twice the time for nothing used.
        """
        return self._digests_among("SELECT digest FROM chunks WHERE digest IN", chunk_ids)

    def _digests_among(self, select_in: str, chunk_ids: Iterable[bytes]) -> set[bytes]:
        """The digests ``select_in (...)`` finds among ``chunk_ids``, batch by batch."""
        with self.db.errors():  # the DB-API's own errors: no SQLAlchemy between
            connection = self._lookup_connection()
            placeholder = "?" if self.db.engine.dialect.paramstyle == "qmark" else "%s"
            found: set[bytes] = set()
            cursor = connection.cursor()
            try:
                for batch in batched([cid.hex() for cid in chunk_ids]):
                    cursor.execute(f"{select_in} ({', '.join([placeholder] * len(batch))})", batch)
                    found.update(bytes.fromhex(digest) for (digest,) in cursor.fetchall())
            finally:
                cursor.close()
                if self.db.engine.dialect.name != "sqlite":
                    connection.rollback()
        return found

    def close(self) -> None:
        with self._lookup_lock:
            for connection in self._lookup_connections.values():
                connection.close()
            self._lookup_connections.clear()

    def _lookup_connection(self) -> Any:
        me = threading.current_thread()
        with self._lookup_lock:
            connection = self._lookup_connections.get(me)
            if connection is not None:
                return connection
            for thread in [t for t in self._lookup_connections if not t.is_alive()]:
                self._lookup_connections.pop(thread).close()
            connection = self._lookup_connections[me] = self.db.engine.raw_connection()
            return connection

    def record_pack(
        self, pack_id: bytes, size: int, entries: list[PackEntry], created_by: str | None = None
    ) -> None:
        with self.db.write() as conn:
            record_pack(conn, pack_id, size, entries, datetime.now(UTC), created_by)

    def locate(self, chunk_ids: Iterable[bytes]) -> dict[bytes, ChunkLocation]:
        found: dict[bytes, ChunkLocation] = {}
        with self.db.read() as conn:
            for batch in batched(cid.hex() for cid in chunk_ids):
                rows = conn.execute(_locations().where(Chunk.digest.in_(batch)))
                for digest, pack, offset, length, raw_size, compression in rows:
                    if (
                        any(type(n) is not int or n < 0 for n in (offset, length, raw_size))
                        or offset + length > MAX_PACK_BYTES
                        or raw_size > MAX_CHUNK_SIZE
                    ):
                        # Damage (db.read says so): no pack trailer holds such an entry, and
                        # the read would blame a sound pack for what the catalog says.
                        raise ValueError(
                            f"chunk {digest} at [{offset!r}, +{length!r}), {raw_size!r} bytes raw"
                        )
                    found[bytes.fromhex(digest)] = ChunkLocation(
                        bytes.fromhex(pack), offset, length, raw_size, compression
                    )
        return found

    def in_packs(self, pack_ids: Iterable[bytes]) -> list[tuple[Any, ...]]:
        """(chunk, pack, offset, length, raw size, compression) of every chunk indexed in these
        packs, as the catalog holds them: for comparing with the packs' trailers, unchecked."""
        with self.db.read() as conn:
            return [
                tuple(row)
                for batch in batched(sorted(p.hex() for p in pack_ids))
                for row in conn.execute(_locations().where(Pack.digest.in_(batch)))
            ]

    def file_chunks(self, file_id: bytes) -> list[bytes] | None:
        """A stored file's chunk list, or None if the catalog does not know the file."""
        with self.db.read() as conn:
            if conn.scalar(select(File.digest).where(File.digest == file_id.hex())) is None:
                return None
            rows = conn.execute(
                select(FileChunk.chunk_digest)
                .where(FileChunk.file_digest == file_id.hex())
                .order_by(FileChunk.seq)
            )
            return [bytes.fromhex(d) for (d,) in rows]


def _locations() -> Select[str, str, int, int, int, int]:
    """Everything a restore takes from the catalog to read a chunk: its pack, offset and
    length, and the raw size and compression it decompresses with."""
    return select(
        Chunk.digest, Pack.digest, Chunk.offset, Chunk.length, Chunk.raw_size, Chunk.compression
    ).join(Pack, Pack.id == Chunk.pack_id)


def insert_pack(
    conn: Connection,
    pack_id: bytes,
    size: int,
    chunk_count: int,
    created_at: datetime,
    created_by: str | None,
) -> int:
    """The pack's row, inserted as live unless it is indexed already; returns its key."""
    conn.execute(
        insert_ignoring_duplicates(conn, Pack).values(
            digest=pack_id.hex(),
            size=size,
            chunk_count=chunk_count,
            state=LIVE,
            created_at=created_at,
            created_by=created_by,
        )
    )
    # Already indexed (a re-run after a crash, or a sync) or just inserted: either way, look it up.
    return int(conn.execute(select(Pack.id).where(Pack.digest == pack_id.hex())).scalar_one())


def record_pack(
    conn: Connection,
    pack_id: bytes,
    size: int,
    entries: list[PackEntry],
    created_at: datetime,
    created_by: str | None = None,
) -> None:
    pack_pk = insert_pack(conn, pack_id, size, len(entries), created_at, created_by)
    rows = [
        {
            "digest": e.chunk_id.hex(),
            "pack_id": pack_pk,
            "offset": e.offset,
            "length": e.length,
            "raw_size": e.raw_size,
            "compression": int(e.compression),
        }
        for e in entries
    ]
    for batch in batched(rows):
        conn.execute(insert_ignoring_duplicates(conn, Chunk), batch)
    # A chunk stored again because its indexed copy is in a condemned pack:
    # index the live copy, so the condemned pack can go and this one stays.
    repoint(conn, pack_pk, entries)


def repoint(
    conn: Connection, pack_pk: int, entries: list[PackEntry], superseded: Collection[bytes] = ()
) -> None:
    """Move chunks indexed in a condemned pack, or in one of ``superseded``, to these entries."""
    if not entries:
        return
    moves = [
        {
            "d": e.chunk_id.hex(),
            "o": e.offset,
            "l": e.length,
            "r": e.raw_size,
            "c": int(e.compression),
        }
        for e in entries
    ]
    move = (
        update(Chunk)
        .values(
            pack_id=pack_pk,
            offset=bindparam("o"),
            length=bindparam("l"),
            raw_size=bindparam("r"),
            compression=bindparam("c"),
        )
        .execution_options(synchronize_session=False)
    )
    condemned = select(Pack.id).where(Pack.state == CONDEMNED).scalar_subquery()
    conn.execute(move.where(Chunk.digest == bindparam("d"), Chunk.pack_id.in_(condemned)), moves)
    gone = list(conn.scalars(select(Pack.id).where(Pack.digest.in_([p.hex() for p in superseded]))))
    for gone_pk in gone:  # few: executemany takes no list parameter
        conn.execute(move.where(Chunk.digest == bindparam("d"), Chunk.pack_id == gone_pk), moves)


def record_files(conn: Connection, files: Mapping[bytes, tuple[int, list[bytes]]]) -> None:
    """Index file contents (id -> size, chunk ids) not indexed yet."""
    fresh: list[bytes] = []
    for batch in batched(files):
        existing = set(
            conn.scalars(select(File.digest).where(File.digest.in_([f.hex() for f in batch])))
        )
        fresh.extend(f for f in batch if f.hex() not in existing)
    file_rows = [
        {"digest": f.hex(), "size": files[f][0], "chunk_count": len(files[f][1])} for f in fresh
    ]
    chunk_rows = [
        {"file_digest": f.hex(), "seq": seq, "chunk_digest": cid.hex()}
        for f in fresh
        for seq, cid in enumerate(files[f][1])
    ]
    for batch in batched(file_rows):
        conn.execute(insert_ignoring_duplicates(conn, File), batch)
    for batch in batched(chunk_rows):
        conn.execute(insert_ignoring_duplicates(conn, FileChunk), batch)
