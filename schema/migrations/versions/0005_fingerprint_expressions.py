"""fingerprint expressions: which row expression each part fingerprint summed

Rows from before this revision keep NULL: they were summed by the legacy
expression, and new backups do not reuse them (they rescan those parts once).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("parts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fp_expression", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("parts", schema=None) as batch_op:
        batch_op.drop_column("fp_expression")
