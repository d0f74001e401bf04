"""Alembic environment for the casbackup catalog.

casbackup runs migrations itself (``casbackup.catalog.database.migrate``) on a
connection it already holds inside a write transaction, so only the online,
connection-provided mode exists here.
"""

from alembic import context

from casbackup.catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("casbackup catalog migrations run through casbackup, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
