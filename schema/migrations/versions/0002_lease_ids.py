"""lease ids of running backups and pack writers (garbage collection safety, issue 5)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:06:37.513757
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_id", sa.String(length=64), nullable=True))

    with op.batch_alter_table("packs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("packs", schema=None) as batch_op:
        batch_op.drop_column("created_by")

    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.drop_column("run_id")
