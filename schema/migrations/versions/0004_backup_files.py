"""server files of backups: configs and access storage (issue 8)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:14:14.717270
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backup_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backup_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("file_digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backup_id"],
            ["backups.id"],
            name=op.f("fk_backup_files_backup_id_backups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["file_digest"], ["files.digest"], name=op.f("fk_backup_files_file_digest_files")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_files")),
        sa.UniqueConstraint(
            "backup_id", "kind", "path", name=op.f("uq_backup_files_backup_id_kind_path")
        ),
    )
    with op.batch_alter_table("backup_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_backup_files_file_digest"), ["file_digest"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("backup_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backup_files_file_digest"))

    op.drop_table("backup_files")
