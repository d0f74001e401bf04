"""The catalog: an index of one repository, in any SQLAlchemy database (SQLite by default)."""

from __future__ import annotations

from casbackup.catalog.backups import BackupRecords, BackupSummary
from casbackup.catalog.database import CatalogDatabase
from casbackup.catalog.index import ChunkIndex


class Catalog:
    """The catalog's parts, opened together for one repository."""

    def __init__(self, db: CatalogDatabase) -> None:
        self.db = db
        self.index = ChunkIndex(db)
        self.backups = BackupRecords(db)

    @classmethod
    def open(cls, url: str, repository_id: str) -> Catalog:
        return cls(CatalogDatabase.open(url, repository_id))

    @property
    def location(self) -> str:
        return self.db.location

    def close(self) -> None:
        self.index.close()
        self.db.close()

    def abandon(self) -> None:
        """Close, undoing the binding to a repository whose ``init`` failed (CatalogDatabase)."""
        self.index.close()
        self.db.abandon()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BackupSummary", "Catalog"]
