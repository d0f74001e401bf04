"""Object stores: where repository objects live."""

from __future__ import annotations

from pathlib import Path

from casbackup.errors import ConfigError
from casbackup.store.base import ObjectInfo, ObjectStore
from casbackup.store.local import LocalStore


def open_store(location: str) -> ObjectStore:
    """A store for a repository location: a local path, file:// URL, or s3:// URL."""
    if location.startswith("s3://"):
        raise ConfigError(detail="S3 repositories are not supported by this build yet")
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(
            detail=f"unsupported repository location {location!r} (use a path or s3://bucket/prefix)"
        )
    return LocalStore(Path(location.removeprefix("file://")))


__all__ = ["LocalStore", "ObjectInfo", "ObjectStore", "open_store"]
