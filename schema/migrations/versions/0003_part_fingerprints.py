"""part fingerprints: content id and row fingerprint per part (verify, issue 6)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 14:29:19.666521
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("parts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("fp_rows", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("fp_hash", sa.String(length=20), nullable=True))
        batch_op.create_index(batch_op.f("ix_parts_content_id"), ["content_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_parts_content_id"))
        batch_op.drop_column("fp_hash")
        batch_op.drop_column("fp_rows")
        batch_op.drop_column("content_id")
