"""initial catalog schema: packs, chunks, files, backups, tables, parts, part files

Revision ID: 0001
Revises:
Create Date: 2026-11-23 12:59:26.229993
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("tool_version", sa.String(length=64), nullable=False),
        sa.Column("clickhouse_version", sa.String(length=64), nullable=False),
        sa.Column("logical_bytes", sa.BigInteger(), nullable=False),
        sa.Column("read_bytes", sa.BigInteger(), nullable=False),
        sa.Column("new_bytes", sa.BigInteger(), nullable=False),
        sa.Column("new_chunks", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=True),
        sa.Column("manifest_size", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'committed')", name=op.f("ck_backups_state_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backups")),
        sa.UniqueConstraint("name", name=op.f("uq_backups_name")),
    )
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backups_state"), ["state"], unique=False)

    op.create_table(
        "catalog_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_catalog_meta")),
    )
    op.create_table(
        "files",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "length(digest) = 64 AND lower(digest) = digest", name=op.f("ck_files_digest_hex")
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_files")),
    )
    op.create_table(
        "packs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("condemned_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('live', 'condemned')", name=op.f("ck_packs_state_known")),
        sa.CheckConstraint(
            "length(digest) = 64 AND lower(digest) = digest", name=op.f("ck_packs_digest_hex")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packs")),
        sa.UniqueConstraint("digest", name=op.f("uq_packs_digest")),
    )
    with op.batch_alter_table("packs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_packs_state"), ["state"], unique=False)

    op.create_table(
        "backup_databases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backup_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("engine", sa.String(length=255), nullable=False),
        sa.Column("create_sql", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backup_id"],
            ["backups.id"],
            name=op.f("fk_backup_databases_backup_id_backups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_databases")),
        sa.UniqueConstraint("backup_id", "name", name=op.f("uq_backup_databases_backup_id_name")),
    )
    op.create_table(
        "backup_tables",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backup_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("database", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("engine", sa.String(length=255), nullable=False),
        sa.Column("create_sql", sa.Text(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=True),
        sa.Column("has_data", sa.Boolean(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("depends_on", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backup_id"],
            ["backups.id"],
            name=op.f("fk_backup_tables_backup_id_backups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_tables")),
        sa.UniqueConstraint(
            "backup_id", "database", "name", name=op.f("uq_backup_tables_backup_id_database_name")
        ),
    )
    op.create_table(
        "chunks",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pack_id", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("raw_size", sa.Integer(), nullable=False),
        sa.Column("compression", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint("compression IN (0, 1)", name=op.f("ck_chunks_compression_known")),
        sa.CheckConstraint(
            "length(digest) = 64 AND lower(digest) = digest", name=op.f("ck_chunks_digest_hex")
        ),
        # "offset" quoted: a reserved word in PostgreSQL, which refused the bare
        # name, so no catalog could be created there. (SQLite accepts both: its
        # catalogs made before the quotes keep the same constraint.)
        sa.CheckConstraint(
            '"offset" >= 0 AND length >= 0 AND raw_size >= 0',
            name=op.f("ck_chunks_sizes_positive"),
        ),
        sa.ForeignKeyConstraint(["pack_id"], ["packs.id"], name=op.f("fk_chunks_pack_id_packs")),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_chunks")),
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chunks_pack_id"), ["pack_id"], unique=False)

    op.create_table(
        "file_chunks",
        sa.Column("file_digest", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("chunk_digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_digest"], ["chunks.digest"], name=op.f("fk_file_chunks_chunk_digest_chunks")
        ),
        sa.ForeignKeyConstraint(
            ["file_digest"],
            ["files.digest"],
            name=op.f("fk_file_chunks_file_digest_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_digest", "seq", name=op.f("pk_file_chunks")),
    )
    with op.batch_alter_table("file_chunks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_file_chunks_chunk_digest"), ["chunk_digest"], unique=False
        )

    op.create_table(
        "parts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("table_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("partition_id", sa.String(length=255), nullable=False),
        sa.Column("min_block", sa.BigInteger(), nullable=False),
        sa.Column("max_block", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("mutation", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["table_id"],
            ["backup_tables.id"],
            name=op.f("fk_parts_table_id_backup_tables"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parts")),
        sa.UniqueConstraint("table_id", "name", name=op.f("uq_parts_table_id_name")),
    )
    op.create_table(
        "part_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("part_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("file_digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
        sa.Column("dev", sa.BigInteger(), nullable=False),
        sa.Column("ino", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("ch_checksum", sa.LargeBinary(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_digest"], ["files.digest"], name=op.f("fk_part_files_file_digest_files")
        ),
        sa.ForeignKeyConstraint(
            ["part_id"], ["parts.id"], name=op.f("fk_part_files_part_id_parts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_part_files")),
        sa.UniqueConstraint("part_id", "path", name=op.f("uq_part_files_part_id_path")),
    )
    with op.batch_alter_table("part_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_part_files_file_digest"), ["file_digest"], unique=False
        )
        batch_op.create_index("ix_part_files_inode", ["dev", "ino"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("part_files", schema=None) as batch_op:
        batch_op.drop_index("ix_part_files_inode")
        batch_op.drop_index(batch_op.f("ix_part_files_file_digest"))

    op.drop_table("part_files")
    op.drop_table("parts")
    with op.batch_alter_table("file_chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_chunks_chunk_digest"))

    op.drop_table("file_chunks")
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chunks_pack_id"))

    op.drop_table("chunks")
    op.drop_table("backup_tables")
    op.drop_table("backup_databases")
    with op.batch_alter_table("packs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_packs_state"))

    op.drop_table("packs")
    op.drop_table("files")
    op.drop_table("catalog_meta")
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backups_state"))

    op.drop_table("backups")
