"""Deleting backups, retention, and abandoned runs.

Deleting a backup removes its manifest (the store's truth) and then its
catalog rows; nothing else depends on it, because no backup is a delta of
another. The space comes back through garbage collection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, select

from casbackup.catalog import Catalog
from casbackup.catalog.models import RUNNING, Backup
from casbackup.errors import BackupNotFound
from casbackup.repo.locks import DEFAULT_TTL, read_locks
from casbackup.repo.repository import Repository
from casbackup.retention import Dated, Decision, Policy, apply_policy


def delete_backups(repo: Repository, catalog: Catalog, names: list[str]) -> list[str]:
    """Delete committed backups; all names are checked before anything is deleted."""
    existing = set(repo.list_backup_names())
    for name in names:
        if name not in existing:
            raise BackupNotFound(name=name)
    for name in dict.fromkeys(names):
        repo.delete_manifest(name)  # the commit point, undone: from here the backup does not exist
        with catalog.db.write() as conn:
            conn.execute(delete(Backup).where(Backup.name == name))
    return list(dict.fromkeys(names))


def forget(
    repo: Repository, catalog: Catalog, policy: Policy, *, dry_run: bool = False
) -> Decision:
    summaries = catalog.backups.summaries()
    decision = apply_policy(
        [Dated(s.name, s.started_at, s.hostname) for s in summaries], policy, now=datetime.now(UTC)
    )
    if not dry_run and decision.remove:
        delete_backups(repo, catalog, decision.remove)
    return decision


@dataclass
class AbandonedRun:
    name: str
    started_at: datetime
    run_id: str | None


@dataclass
class BrokenReport:
    abandoned: list[AbandonedRun] = field(default_factory=list)


def abandoned_runs(
    repo: Repository,
    catalog: Catalog,
    *,
    margin: float,
    ttl: float = DEFAULT_TTL,
    clock: float | None = None,
) -> list[AbandonedRun]:
    """Backups the catalog says are running, whose process is gone and which are older than ``margin``."""
    now = time.time() if clock is None else clock
    alive = {r.id for r in read_locks(repo.store) if r.kind == "backup" and not r.stale(now, ttl)}
    committed = set(repo.list_backup_names())
    with catalog.db.read() as conn:
        rows = conn.execute(
            select(Backup.name, Backup.started_at, Backup.run_id).where(Backup.state == RUNNING)
        ).all()
    found = []
    for name, started_at, run_id in rows:
        started = (
            started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
        )  # SQLite drops it
        if name in committed or run_id in alive:
            continue  # committed after all (sync will settle it), or still running
        if now - started.timestamp() < margin:
            continue
        found.append(AbandonedRun(name, started, run_id))
    return found


def forget_abandoned(catalog: Catalog, runs: list[AbandonedRun]) -> None:
    """Delete the rows of these runs; a row a newer run of the same name holds is left alone."""
    with catalog.db.write() as conn:
        for run in runs:
            conn.execute(
                delete(Backup).where(
                    Backup.name == run.name,
                    Backup.state == RUNNING,
                    Backup.run_id == run.run_id,  # IS NULL for rows older than leases
                )
            )
