"""`casbackup clean`: remove what interrupted runs left behind.

Only debris whose maker is provably gone is touched: shadow directories and
temporary part directories carry the pid and start time of the process that
made them (``casbackup.process``), as do this host's locks and leases, and
store temporaries must be older than an hour. The file of a killed
`catalog rebuild` carries its process's tag too. A concurrent backup or restore
in progress is never disturbed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from casbackup.catalog.rebuild import stale_rebuild_files
from casbackup.clickhouse.freeze import shadow_root, stale_shadows
from casbackup.clickhouse.server import SCRATCH_PREFIX, ClickHouseServer, TableInfo
from casbackup.clickhouse.sql import qualified
from casbackup.errors import ClickHouseError, ObjectNotFound, StorePermissionDenied
from casbackup.process import name_owner
from casbackup.repo import keys
from casbackup.repo.locks import LockRecord, machine_id, read_lock, read_locks
from casbackup.restore import (
    ATTACHING_PREFIX,
    CH_ATTACHING,
    MERGES_PAUSED_PREFIX,
    PARTIAL_PREFIX,
    TEMP_PREFIX,
    attaching_part,
    marked_partitions,
    stale_markers,
    temp_part_owner,
)
from casbackup.store.base import LeavesTemporaries, ObjectStore

STORE_TEMP_MIN_AGE_S = 3600


@dataclass
class CleanReport:
    shadows: list[str] = field(default_factory=list)
    temp_parts: list[str] = field(default_factory=list)
    scratch_databases: list[str] = field(default_factory=list)
    store_temporaries: int = 0
    stale_locks: list[str] = field(default_factory=list)
    catalog_temporaries: list[str] = field(default_factory=list)
    merges_resumed: list[str] = field(default_factory=list)
    partial_restores: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def clean_clickhouse(
    server: ClickHouseServer, report: CleanReport, *, dry_run: bool = False
) -> None:
    for disk, name, alive in stale_shadows(server, include_live=True):
        root = shadow_root(disk, name)
        if alive:
            report.skipped_live.append(str(root))
            continue
        if not dry_run:
            if root.is_symlink():  # named like a shadow: the link goes, never what it points at
                with contextlib.suppress(OSError):
                    root.unlink()
            else:
                shutil.rmtree(root, ignore_errors=True)
            if os.path.lexists(root):  # not "removed", every run again
                report.warnings.append(f"cannot remove shadow {root}; remove it by hand")
                continue
        report.shadows.append(str(root))
    for database in server.databases():
        if not database.name.startswith(SCRATCH_PREFIX):
            continue
        owner = name_owner(database.name, SCRATCH_PREFIX)
        if owner is not None and owner.alive():
            report.skipped_live.append(database.name)
            continue
        report.scratch_databases.append(database.name)  # left by a verify that was killed
        if not dry_run:
            server.drop_database(database.name)
    for table in server.tables():
        for data_path in table.data_paths:
            detached = Path(data_path) / "detached"
            if not detached.is_dir():
                continue
            for entry in sorted(detached.glob(f"{TEMP_PREFIX}*")):
                owner = temp_part_owner(entry.name)
                if owner is not None and owner.alive():
                    report.skipped_live.append(str(entry))
                    continue
                report.temp_parts.append(str(entry))
                if not dry_run:
                    shutil.rmtree(entry, ignore_errors=True)
            for marker in sorted(detached.glob(f"{ATTACHING_PREFIX}*")):
                owner = temp_part_owner(marker.name, ATTACHING_PREFIX)
                if owner is None or owner.alive():
                    report.skipped_live.append(str(marker))
                    continue
                names = [entry.name for entry in detached.iterdir()]
                part = attaching_part(
                    marker.name,
                    [*names, *(n.removeprefix(CH_ATTACHING) for n in names)],
                )
                debris = [marker]
                # The part as the restore renamed it, or as ATTACH PART renamed it
                # in turn: an engine killed inside ATTACH (chdb runs in the
                # restore's process) leaves it as attaching_<part>.
                if part is not None:
                    for renamed in (detached / part, detached / (CH_ATTACHING + part)):
                        if _renamed_beside(renamed, marker):
                            debris.insert(0, renamed)
                report.temp_parts += [str(p) for p in debris]
                if not dry_run:
                    for path in debris:
                        shutil.rmtree(path, ignore_errors=True)
            _resume_merges(server, table, detached, report, dry_run=dry_run)
            for marker, alive in stale_markers(detached, PARTIAL_PREFIX):
                if alive or table.database.startswith(SCRATCH_PREFIX):
                    continue  # a restore attaching now; verify drops its scratch copies itself
                if not _holds_marked_parts(server, table, marker):
                    # Killed before its first ATTACH landed: nothing is part-restored.
                    report.temp_parts.append(str(marker))
                    if not dry_run:
                        shutil.rmtree(marker, ignore_errors=True)
                    continue
                report.partial_restores.append(table.qualified)
                report.warnings.append(
                    f"{table.qualified} holds only some of the parts a restore was attaching when "
                    "it stopped: run that restore again with --drop-existing to restore it whole"
                )
                if not dry_run:
                    shutil.rmtree(marker, ignore_errors=True)


def _holds_marked_parts(server: ClickHouseServer, table: TableInfo, marker: Path) -> bool:
    """Whether ``table`` has parts where the partial ``marker``'s restore was attaching.

    The restore marks the table just before its first ATTACH, into a table
    (or partitions) it found empty or had emptied: with no part there, it
    was killed before that ATTACH landed and the table is not part-restored.
    """
    partitions = marked_partitions(marker)
    return any(
        not partitions or part.partition_id in partitions
        for part in server.parts(table.database, table.name)
    )


def _resume_merges(
    server: ClickHouseServer,
    table: TableInfo,
    detached: Path,
    report: CleanReport,
    *,
    dry_run: bool,
) -> None:
    """SYSTEM START MERGES once for a table whose restores that stopped them are all gone."""
    paused = list(stale_markers(detached, MERGES_PAUSED_PREFIX))
    if not paused:
        return
    if any(alive for _, alive in paused):
        # A restore attaching now needs them stopped; it starts them itself.
        report.skipped_live += [str(marker) for marker, _ in paused]
        return
    if not dry_run:
        try:
            server.execute(f"SYSTEM START MERGES {qualified(table.database, table.name)}")
        except ClickHouseError as exc:  # the markers stay for the next clean
            report.warnings.append(
                f"could not resume the merges of {table.qualified}: {exc.message}"
            )
            return
        for marker, _ in paused:
            shutil.rmtree(marker, ignore_errors=True)
    report.merges_resumed.append(table.qualified)  # a killed restore stopped them


# A rename into detached/ happens right after its marker is made; a part
# detached by hand later (DETACH renames it back under the same name) has a
# ctime of that later moment.
_RENAME_WINDOW_S = 30.0


def _renamed_beside(part: Path, marker: Path) -> bool:
    """Whether ``part`` is the one a killed restore renamed into place after making ``marker``.

    The name alone does not say: a restore killed after ATTACH leaves its
    marker, and the operator may detach that very part later. The rename
    that put the part there changed its ctime moments after the marker's
    mtime; a DETACH changes it again.
    """
    try:
        renamed, made = part.lstat().st_ctime, marker.lstat().st_mtime
    except FileNotFoundError:
        return False
    return part.is_dir() and made - 1.0 <= renamed <= made + _RENAME_WINDOW_S


def clean_store(
    store: ObjectStore,
    report: CleanReport,
    *,
    dry_run: bool = False,
    min_age: float = STORE_TEMP_MIN_AGE_S,
) -> None:
    """Partial uploads of killed runs (an in-progress upload of a live run is younger than min_age)."""
    if isinstance(store, LeavesTemporaries):
        try:
            report.store_temporaries = store.remove_stale_temporaries(
                min_age, under=keys.WRITTEN_PREFIXES, dry_run=dry_run
            )
        except StorePermissionDenied as exc:
            # The IAM policy of docs/operations.md grants no
            # s3:ListBucketMultipartUploads (a bucket lifecycle rule aborts
            # them instead); the stale locks below are still ours to remove.
            report.warnings.append(f"skipped stale uploads in the store: {exc.message}")
    # Leases and locks of this host's processes that are gone (pid and start
    # time, no clocks): a backup or run killed with SIGKILL cannot remove its own.
    # Other hosts' are theirs to judge (`unlock` uses the lease TTL for them).
    here = machine_id()
    for record in read_locks(store):
        if record.machine == here and record.stale(time.time()):
            report.stale_locks.append(record.key)
            if not dry_run:
                _delete_if_still(store, record)


def clean_catalog(url: str, report: CleanReport, *, dry_run: bool = False) -> None:
    """The new catalog file of a `catalog rebuild` killed before it renamed it over the old."""
    for path in stale_rebuild_files(url):
        report.catalog_temporaries.append(str(path))
        if not dry_run:
            path.unlink(missing_ok=True)


def _delete_if_still(store: ObjectStore, record: LockRecord) -> None:
    """Delete a stale lock unless it changed hands since it was read.

    An exclusive lock's key is reused: a gc that broke this dead lock and
    took its own in between must keep it. (The read and the delete are two
    calls, so this narrows the window; it cannot close it on an object store.)
    """
    try:
        current = read_lock(store, record.key)
    except ObjectNotFound:
        return
    if current.id == record.id and current.pid == record.pid:
        store.delete(record.key)
