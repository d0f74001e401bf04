"""manifest versions: the store's version of each backup's manifest object

With the size, it tells a manifest another host wrote under a name it deleted
before from the one this catalog indexed, also when both have the same size.
Rows from before this revision keep NULL: their size alone decides, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("manifest_version", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backups", schema=None) as batch_op:
        batch_op.drop_column("manifest_version")
