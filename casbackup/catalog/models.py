"""The catalog schema: an index of the repository, rebuildable from the store.

backups -> backup_databases, backup_tables -> parts -> part_files -> files
-> file_chunks -> chunks -> packs. Digests are stored as 64-character lower-case
hex with a CHECK constraint: readable in any SQL console, portable to any
SQLAlchemy backend. Indexes follow the queries that run hot:

- dedupe: chunk by digest (primary key), joined to its pack's state;
- restore: a file's chunks in order (file_chunks primary key), chunk location;
- change detection: a part file by (dev, ino) to reuse its chunk list;
- GC: chunks by pack, file_chunks by chunk, part_files by file.

Any change here needs a migration in schema/migrations/versions; the test
``tests/catalog/test_migrations.py`` fails when models and migrations disagree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HEX_DIGEST_LENGTH = 64

# Backup states. Only "committed" backups exist as far as restore and GC care;
# the manifest in the store is the truth and the state here mirrors it.
RUNNING = "running"
COMMITTED = "committed"
BACKUP_STATES = (RUNNING, COMMITTED)

# Pack states (garbage collection, see docs/design.md).
LIVE = "live"
CONDEMNED = "condemned"
PACK_STATES = (LIVE, CONDEMNED)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _hex_check(column: str) -> CheckConstraint:
    return CheckConstraint(
        f"length({column}) = {HEX_DIGEST_LENGTH} AND lower({column}) = {column}",
        name=f"{column}_hex",
    )


def _digest() -> Mapped[str]:
    return mapped_column(String(HEX_DIGEST_LENGTH), primary_key=True)


class CatalogMeta(Base):
    """Key/value facts about the catalog itself, e.g. which repository it indexes."""

    __tablename__ = "catalog_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Pack(Base):
    __tablename__ = "packs"
    __table_args__ = (
        _hex_check("digest"),
        CheckConstraint(f"state IN {PACK_STATES!r}", name="state_known"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(HEX_DIGEST_LENGTH), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=LIVE, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    condemned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The run (lease id) that wrote the pack; gc leaves packs of live runs alone.
    created_by: Mapped[str | None] = mapped_column(String(64), default=None)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        _hex_check("digest"),
        CheckConstraint("compression IN (0, 1)", name="compression_known"),
        # "offset" quoted: a reserved word in PostgreSQL, where the bare name is a syntax error.
        CheckConstraint('"offset" >= 0 AND length >= 0 AND raw_size >= 0', name="sizes_positive"),
    )
    digest: Mapped[str] = _digest()
    pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    raw_size: Mapped[int] = mapped_column(Integer)
    compression: Mapped[int] = mapped_column(SmallInteger)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (_hex_check("digest"),)
    digest: Mapped[str] = _digest()
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int] = mapped_column(Integer)


class FileChunk(Base):
    __tablename__ = "file_chunks"
    file_digest: Mapped[str] = mapped_column(
        ForeignKey("files.digest", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_digest: Mapped[str] = mapped_column(ForeignKey("chunks.digest"), index=True)


class Backup(Base):
    __tablename__ = "backups"
    __table_args__ = (CheckConstraint(f"state IN {BACKUP_STATES!r}", name="state_known"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hostname: Mapped[str] = mapped_column(String(255))
    tool_version: Mapped[str] = mapped_column(String(64))
    clickhouse_version: Mapped[str] = mapped_column(String(64), default="")
    logical_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    read_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    new_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    new_chunks: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    manifest_digest: Mapped[str | None] = mapped_column(String(HEX_DIGEST_LENGTH))
    manifest_size: Mapped[int | None] = mapped_column(BigInteger)
    # The store's version of the manifest object (repo.repository.ManifestStamp).
    manifest_version: Mapped[str | None] = mapped_column(String(128), default=None)
    # Lease of the process writing a running backup: tells a live run from an abandoned one.
    run_id: Mapped[str | None] = mapped_column(String(64), default=None)

    databases: Mapped[list[BackupDatabase]] = relationship(
        back_populates="backup",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="BackupDatabase.position",
    )
    tables: Mapped[list[BackupTable]] = relationship(
        back_populates="backup",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="BackupTable.position",
    )


class BackupDatabase(Base):
    __tablename__ = "backup_databases"
    __table_args__ = (UniqueConstraint("backup_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    engine: Mapped[str] = mapped_column(String(255))
    create_sql: Mapped[str] = mapped_column(Text)
    backup: Mapped[Backup] = relationship(back_populates="databases")


class BackupTable(Base):
    __tablename__ = "backup_tables"
    __table_args__ = (UniqueConstraint("backup_id", "database", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    database: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    engine: Mapped[str] = mapped_column(String(255))
    create_sql: Mapped[str] = mapped_column(Text)
    uuid: Mapped[str | None] = mapped_column(String(36))
    has_data: Mapped[bool]
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    depends_on: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of [db, table]
    backup: Mapped[Backup] = relationship(back_populates="tables")
    parts: Mapped[list[Part]] = relationship(
        back_populates="table",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Part.position",
    )


class Part(Base):
    __tablename__ = "parts"
    __table_args__ = (UniqueConstraint("table_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("backup_tables.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    partition_id: Mapped[str] = mapped_column(String(255))
    min_block: Mapped[int] = mapped_column(BigInteger)
    max_block: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[int] = mapped_column(Integer)
    mutation: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    disk: Mapped[str] = mapped_column(String(255))
    # What the part holds (its paths and file ids), and ClickHouse's fingerprint
    # of its rows when backed up: a later backup of the same content (even
    # renamed by a mutation) reuses the fingerprint instead of scanning again.
    content_id: Mapped[str | None] = mapped_column(
        String(HEX_DIGEST_LENGTH), index=True, default=None
    )
    fp_rows: Mapped[int | None] = mapped_column(BigInteger, default=None)
    fp_hash: Mapped[str | None] = mapped_column(String(20), default=None)  # UInt64 as decimal text
    # The row expression the fingerprint summed; reused only under the same one.
    fp_expression: Mapped[str | None] = mapped_column(String(32), default=None)
    table: Mapped[BackupTable] = relationship(back_populates="parts")
    files: Mapped[list[PartFile]] = relationship(
        back_populates="part",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="PartFile.position",
    )


class PartFile(Base):
    __tablename__ = "part_files"
    __table_args__ = (
        UniqueConstraint("part_id", "path"),
        Index("ix_part_files_inode", "dev", "ino"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    file_digest: Mapped[str] = mapped_column(ForeignKey("files.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[int] = mapped_column(Integer)
    dev: Mapped[int] = mapped_column(BigInteger)
    ino: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    ch_checksum: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    part: Mapped[Part] = relationship(back_populates="files")


class BackupFile(Base):
    """A server file a backup holds besides part files (configs, access storage).

    Listed so that garbage collection, which keeps what backups reference,
    sees these files' chunks as referenced too.
    """

    __tablename__ = "backup_files"
    __table_args__ = (UniqueConstraint("backup_id", "kind", "path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "config" or "access"
    path: Mapped[str] = mapped_column(Text)
    file_digest: Mapped[str] = mapped_column(ForeignKey("files.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[int] = mapped_column(Integer)


# Every file content some backup references: part files and server files.
REFERENCED_FILES_SQL = (
    "SELECT file_digest FROM part_files UNION SELECT file_digest FROM backup_files"
)
