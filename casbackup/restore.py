"""`casbackup restore`: recreate schemas and attach parts from a backup.

Order of work, so a refusal never leaves anything half-done:

1. plan: choose tables (patterns; a materialized view brings its inner table),
   map databases (``--as``), and check every target. A table that exists with
   data (or a view that exists) is a conflict unless ``--drop-existing``; all
   conflicts are reported together and nothing is changed. A table that is
   reused (not created from the backup's definition) must have the types
   the parts' ``columns.txt`` give the columns both have.
2. schema: create missing databases (same engine), drop what ``--drop-existing``
   replaces, create objects in the recorded dependency order, retrying ones
   whose dependencies are not there yet.
3. data: for each part, in min-block order, fetch and verify every chunk, write
   the files into ``detached/`` under a temporary name, give them the table
   directory's owner, rename into place and ``ATTACH PART``. Merges of the
   table are paused meanwhile, so the row count checked at the end is the
   one the backup recorded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import blake3

from casbackup import interrupts
from casbackup.catalog import Catalog
from casbackup.catalog.rebuild import sync
from casbackup.clickhouse.columns import TypeConflict, parse_columns_txt, type_conflicts
from casbackup.clickhouse.part_check import check_part
from casbackup.clickhouse.server import (
    SCRATCH_PREFIX,
    ClickHouseServer,
    TableInfo,
    holds_rows_not_backed_up,
    version_tuple,
)
from casbackup.clickhouse.sql import (
    create_target,
    qualified,
    quote_identifier,
    rename_databases,
    rename_dictionary_source,
    rename_engine_database,
    set_create_target,
    statement_kind,
)
from casbackup.errors import (
    ClickHouseError,
    ColumnTypeConflict,
    DetachedPartExists,
    FilesConflict,
    IntegrityError,
    ManifestCorrupt,
    NewerServerBackup,
    NothingSelected,
    PackLost,
    PackMissing,
    PartDamaged,
    RestoreConflict,
    RestoreFailed,
    UnsafePath,
    UsageError,
)
from casbackup.file_errors import writing
from casbackup.ordering import is_inner_table
from casbackup.process import NAME_MAX, ProcessTag, name_owner, tagged_name
from casbackup.repo import manifest as mf
from casbackup.repo.reader import (
    ChunkFetcher,
    ChunkLocation,
    FileTarget,
    read_files,
    write_files,
)
from casbackup.repo.repository import Repository
from casbackup.selection import (
    partition_selected,
    select,
    spec_selects,
    unmatched,
    unmatched_warning,
)
from casbackup.server_state import (
    check_no_clashes,
    replaced_files,
    restore_directory,
    restore_objects,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TEMP_PREFIX = "casbackup_tmp_"

# Up to this many targets in one database are looked up one by one (a query
# each, cheap); more, and the database is listed once.
LOOKUPS_BEFORE_LISTING = 8

# A part's columns.txt is read into memory before the restore: bigger than
# this, it is not one ClickHouse wrote (10,000 columns of long Enum types
# make a few MiB).
MAX_COLUMNS_TXT = 64 * 1024 * 1024
# And they are read this many bytes at a time: a repository's manifest could
# name thousands of distinct ones of up to MAX_COLUMNS_TXT (files are chunk
# lists, and the same chunks in another order make another file).
COLUMNS_TXT_BATCH = 64 * 1024 * 1024


def _batches_of_bytes(contents: list[mf.FileContent], limit: int) -> Iterator[list[mf.FileContent]]:
    """``contents`` in order, in batches of at most ``limit`` bytes (or one file, if bigger)."""
    batch: list[mf.FileContent] = []
    size = 0
    for content in contents:
        if batch and size + content.size > limit:
            yield batch
            batch, size = [], 0
        batch.append(content)
        size += content.size
    if batch:
        yield batch


@dataclass(frozen=True)
class RestoreOptions:
    tables: tuple[str, ...] = ("*.*",)
    exclude: tuple[str, ...] = ()
    database_map: dict[str, str] = field(default_factory=dict)
    schema_only: bool = False
    data_only: bool = False
    drop_existing: bool = False
    threads: int = 4
    restore_tables: bool = True  # False: only server state (--rbac, --configs)
    partitions: tuple[str, ...] = ()  # only these partitions; existing tables are then reused
    ignore_dependencies: bool = False  # create what can be created, report the rest
    functions: bool = True  # SQL functions and named collections (views may need them)
    access: bool = False  # access entities and grants (restore --rbac)
    on_existing: str = "skip"  # for server objects: skip | replace | fail
    files_target: Path | None = None  # where stored configs / access files are written
    configs: bool = False
    overwrite_files: bool = False
    # Check every staged part's files against its checksums.txt before any is
    # attached (verify --restore, restore --check); see clickhouse.part_check.
    check_parts: bool = False
    # A pack the catalog locates chunks in is gone: another host's gc moved
    # them since this catalog last synced (the backup lists agree, so nothing
    # synced before the restore). Sync once and look the chunks up again.
    # verify leaves this off: it reports the catalog as it is, never repairs it.
    follow_repacks: bool = False
    # Restore tables of a backup made on a newer ClickHouse release all the same
    # (an upgrade rolled back within a few releases): ClickHouse itself then
    # refuses what it cannot read.
    allow_older_server: bool = False
    # Leave the restored table's merges stopped (verify's scratch tables): a
    # merge may change what a check then reads, e.g. a TTL merge dropping rows
    # that had expired at backup time but were still in the parts.
    keep_merges_stopped: bool = False
    # Compare the column types of the parts with those of a table the restore
    # reuses. verify --restore leaves it off: its --data-only targets are
    # scratch tables it has just created from the backup's own definitions;
    # so does --allow-type-change, for releases that convert on read.
    check_column_types: bool = True


@dataclass
class TableOutcome:
    source: str
    target: str
    engine: str
    parts: int = 0
    rows: int = 0
    created: bool = False


@dataclass
class RestoreReport:
    backup: str
    tables: list[TableOutcome] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # server objects created
    skipped_objects: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # config / access files written
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RestoreProgress:
    def start(self, total_bytes: int) -> None: ...

    def table(self, target: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass
class _Item:
    """One object of the backup and where it goes."""

    entry: mf.Table
    database: str
    name: str  # for inner tables: resolved after their view is created
    existing: TableInfo | None = None
    owner_view: mf.Table | None = None

    @property
    def target(self) -> str:
        return f"{self.database}.{self.name}"


def temp_part_name(part: str, prefix: str = TEMP_PREFIX) -> str:
    """``casbackup_tmp_<pid>_<start>_<rand>_<part>``: `clean` removes those whose process is gone.

    A part name near the file-name limit (a partition key of ten Int64
    columns makes 215 bytes, which ClickHouse's own shorter prefixes fit)
    stands as its digest (``part_digest``) instead: the name cut would fail
    no more, but two parts of one partition differ only at its end, and
    `clean` must still find the part an attaching marker stands for.
    """
    tagged = tagged_name(prefix)
    name = f"{tagged}_{part}"
    return name if len(name.encode()) <= NAME_MAX else f"{tagged}_{part_digest(part)}"


# No part name starts with it: partition IDs are made of letters, digits and '-'.
_DIGEST_MARK = "~"


def part_digest(part: str) -> str:
    """``~<128 bits of the name's BLAKE3, hex>``: a long part name, in a temporary's name."""
    return _DIGEST_MARK + blake3.blake3(part.encode()).hexdigest(length=16)


def temp_part_owner(name: str, prefix: str = TEMP_PREFIX) -> ProcessTag | None:
    if len(name.removeprefix(prefix).split("_")) < 4:
        return None
    return name_owner(name, prefix)


# An empty directory beside detached/<part> while a part goes from its staging
# name to ATTACH: a restore killed in between leaves detached/<part> under the
# name ATTACH expects, where nothing else says whose it is. The marker says it
# (``casbackup_attaching_<pid>_<start>_<rand>_<part>``), so `clean` can remove both.
ATTACHING_PREFIX = "casbackup_attaching_"
# ATTACH PART's own: it renames detached/<part> to this before it takes the part
# in, so an engine killed in between (chdb runs in the restore's process)
# leaves it so; its ctime then is that of the restore's rename, within ms.
CH_ATTACHING = "attaching_"


def attaching_part(marker: str, present: Iterable[str] = ()) -> str | None:
    """The part name an attaching marker stands for; None if it names no part.

    A marker of a long part name holds its digest (``temp_part_name``): the
    part is then the one among ``present`` (the names in detached/) with it.
    """
    fields = marker.removeprefix(ATTACHING_PREFIX).split("_", 3)
    if len(fields) < 4:
        return None
    if fields[3].startswith(_DIGEST_MARK):
        return next((name for name in present if part_digest(name) == fields[3]), None)
    try:
        return mf.safe_part_name(fields[3])
    except UnsafePath:  # `..`, '' or worse: never a path to remove
        return None


# An empty directory under detached/ while a restore has the table's merges
# stopped (``casbackup_merges_paused_<pid>_<start>_<rand>``): `clean` resumes
# the merges of a table whose marker's process is gone.
MERGES_PAUSED_PREFIX = "casbackup_merges_paused_"


# A directory under detached/ from just before a table's first ATTACH of a
# restore until its last (``casbackup_partial_<pid>_<start>_<rand>``). A
# restore that stops in between leaves the table holding only some of the
# backup's parts, and a table that looks restored: the marker outlives the
# run, so `clean` and the next restore into that table can say so. Made
# before the first ATTACH, not after it, since a restore killed as that ATTACH
# returns would otherwise leave a part-restored table unmarked; one killed
# before the ATTACH landed leaves a marker on a table (or partitions) still
# empty, which `clean` removes without a warning. Empty for a restore of the
# whole table; a --partitions restore lists in it, as empty files, the
# partition ids it attaches, so that a restore of those partitions again
# removes it.
PARTIAL_PREFIX = "casbackup_partial_"
# What ClickHouse's partition ids are made of ('all', 202401, 2024-3, a hash):
# an id from the manifest that is not such is not made a file name.
_PARTITION_ID = re.compile(r"[0-9A-Za-z_-]+")


def marker_owner(name: str, prefix: str) -> ProcessTag | None:
    """The process of a whole-table marker (``<prefix><pid>_<start>_<rand>``, nothing after)."""
    if len(name.removeprefix(prefix).split("_")) != 3:
        return None
    return name_owner(name, prefix)


def stale_markers(detached: Path, prefix: str) -> Iterator[tuple[Path, bool]]:
    """Whole-table markers under ``detached`` with ``prefix``, and whether their process runs."""
    for marker in sorted(detached.glob(f"{prefix}*")):
        owner = marker_owner(marker.name, prefix)
        yield marker, owner is not None and owner.alive()


def left_partial(table: TableInfo) -> bool:
    """Whether a restore that is gone stopped while attaching parts to ``table``."""
    return any(
        not alive
        for path in table.data_paths
        for _, alive in stale_markers(Path(path) / "detached", PARTIAL_PREFIX)
    )


@dataclass
class _Attaching:
    """How far a table's ATTACH loop got, for what a stop part-way says."""

    total: int
    marker: Path
    partitions: frozenset[str] = frozenset()  # --partitions: the ids of the parts attached
    done: int = 0

    def attaching(self) -> None:
        """Before an ATTACH: the first of several marks the table, as it may be part-restored from now."""
        if self.done == 0 and self.total > 1 and not self.marker.exists():
            with writing(self.marker):
                self.marker.mkdir()
                if all(_PARTITION_ID.fullmatch(p) for p in self.partitions):
                    for partition_id in self.partitions:
                        (self.marker / partition_id).touch()

    def attached(self) -> None:
        self.done += 1

    def finished(self) -> None:
        shutil.rmtree(self.marker, ignore_errors=True)


def marked_partitions(marker: Path) -> set[str]:
    """The partition ids a --partitions restore's partial marker lists (none: the whole table)."""
    try:
        return {entry.name for entry in marker.iterdir()}
    except OSError:
        return set()


class RestoreService:
    def __init__(
        self,
        server: ClickHouseServer,
        repo: Repository,
        catalog: Catalog,
        manifest: mf.Manifest,
        options: RestoreOptions,
        progress: RestoreProgress | None = None,
    ) -> None:
        self.server = server
        self.repo = repo
        self.catalog = catalog
        self.manifest = manifest
        self.options = options
        self.progress = progress or RestoreProgress()
        self.files = manifest.file_table()
        # check_parts: per target table whose parts passed, how many had no
        # checksums.txt; here rather than in the report, so that a failure
        # after the check (verify) does not hide it.
        self.checked: dict[str, int] = {}
        self.unused_specs: list[str] = []  # --partitions specs that chose nothing (plan)
        self.unmatched_patterns: list[str] = []  # --tables patterns that chose nothing (plan)
        # What `db.x` can name as a table when --as rewrites statements.
        self.backed_up = frozenset((t.database, t.name) for t in manifest.tables)
        self.synced = False  # follow_repacks: the catalog was synced once already
        # --drop-existing: what it dropped (truncated, or dropped partitions of)
        # and how, and which of those the restore has put back (created, data
        # attached) or attached some parts to (_attach_all's note says what
        # that one holds): a stop in between names the rest, whose old data is gone.
        self.replaced: dict[int, tuple[_Item, str]] = {}
        self.put_back: set[int] = set()
        self.staged_configs: Path | None = None  # where _restore_files put the config files

    # --- 1. plan -----------------------------------------------------------------

    def plan(self) -> list[_Item]:
        """What to restore, with every conflict found before anything is changed."""
        recorded = {t.database for t in self.manifest.tables} | {
            d.name for d in self.manifest.databases
        }
        unknown = sorted(set(self.options.database_map) - recorded)
        if unknown:  # a typo would restore in place, and with --drop-existing over live tables
            raise UsageError(
                detail=f"--as names {', '.join(map(repr, unknown))}, which backup "
                f"{self.manifest.name} holds no database of (it has: {', '.join(sorted(recorded))})"
            )
        self._check_server_state()
        if not self.options.restore_tables:
            return []
        self._check_server_version()
        chosen = select(self.manifest.tables, self.options.tables, self.options.exclude)
        if not chosen:
            raise NothingSelected(patterns=", ".join(self.options.tables))
        self.unmatched_patterns = unmatched(self.manifest.tables, self.options.tables)
        keys = {(t.database, t.name) for t in chosen}
        views = {
            (t.database, t.name): t for t in self.manifest.tables if t.engine == "MaterializedView"
        }
        for t in self.manifest.tables:  # inner tables travel with their view, both ways
            owner = self._owner_view(t, views)
            if owner is not None and (owner.database, owner.name) in keys:
                keys.add((t.database, t.name))
        items: list[_Item] = []
        for t in self.manifest.tables:
            if (t.database, t.name) not in keys:
                continue
            database = self.options.database_map.get(t.database, t.database)
            owner = self._owner_view(t, views)
            if is_inner_table(t.name) and owner is None:
                log.warning(
                    "inner table %s has no materialized view in the backup; restoring it as a table",
                    t.name,
                )
            items.append(_Item(t, database, t.name, owner_view=owner))
        self._check_statements(items)
        self._check_targets(items)
        self._check_column_types(items)
        self.unused_specs = [
            spec
            for spec in self.options.partitions
            if not any(
                spec_selects(spec, i.entry.database, i.entry.name, p.partition_id, p.partition)
                for i in items
                for p in i.entry.parts
            )
        ]
        return items

    def _check_server_version(self) -> None:
        """Tables of a backup made on a newer ClickHouse release are refused before any change."""
        made_on = version_tuple(self.manifest.clickhouse_version)[:2]
        if (
            made_on > version_tuple(self.server.info.version)[:2]
            and not self.options.allow_older_server
        ):
            raise NewerServerBackup(
                backup=self.manifest.name,
                made_on=self.manifest.clickhouse_version,
                version=self.server.info.version,
                release=".".join(map(str, made_on)),
            )

    def _check_statements(self, items: list[_Item]) -> None:
        """Every recorded CREATE this restore may run parses, checked before anything changes.

        The statements come from the manifest, which is untrusted: one that is
        not a CREATE of the right kind is damage to the backup (exit 15), found
        before a database is created for it.
        """
        databases = {d.name: d for d in self.manifest.databases}
        statements = []
        for item in items:
            entry = item.entry
            statements.append((f"{entry.database}.{entry.name}", entry.create_sql, False))
            if entry.database in databases:
                database = databases[entry.database]
                statements.append((f"database {database.name}", database.create_sql, True))
        for what, sql, is_database in statements:
            try:
                kind = statement_kind(sql)
                create_target(sql)
            except ValueError as exc:
                raise ManifestCorrupt(backup=self.manifest.name, detail=f"{what}: {exc}") from None
            if (kind == "DATABASE") != is_database:
                raise ManifestCorrupt(
                    backup=self.manifest.name, detail=f"{what}: recorded as CREATE {kind}"
                )

    def _check_server_state(self) -> None:
        if self.options.on_existing == "fail":
            objects = list(self.manifest.access) if self.options.access else []
            if self.options.functions and not self.options.data_only:
                objects += [*self.manifest.functions, *self.manifest.named_collections]
            check_no_clashes(self.server, objects)
        for fileset, target in self._file_restores():
            replaced_files(fileset, target, overwrite=self.options.overwrite_files)

    def _file_restores(self) -> list[tuple[mf.FileSet, Path]]:
        """(stored directory, where it goes) for --configs and, with --rbac, the access files."""
        wanted = [
            (fileset, sub)
            for fileset, sub, asked in (
                (self.manifest.configs, "configs", self.options.configs),
                (self.manifest.access_files, "access", self.options.access),
            )
            if asked and fileset is not None
        ]
        if wanted and self.options.files_target is None:
            raise UsageError(detail="restoring configs or access files needs a target directory")
        restores = [
            (fileset, self.options.files_target / sub)
            for fileset, sub in wanted
            if self.options.files_target
        ]
        for _, target in restores:
            # replaced_files checks the directories below target; target itself
            # is made by casbackup under --files-target, and a link there would
            # put every file outside --files-target.
            if target.is_symlink():
                raise FilesConflict(
                    detail=f"{target} is a symbolic link: restoring there would write outside "
                    f"{target.parent} (restore into an empty --files-target instead)"
                )
        return restores

    @staticmethod
    def _owner_view(table: mf.Table, views: dict[tuple[str, str], mf.Table]) -> mf.Table | None:
        if table.name.startswith(".inner_id."):
            uuid = table.name.removeprefix(".inner_id.")
            return next(
                (v for v in views.values() if v.database == table.database and v.uuid == uuid), None
            )
        if table.name.startswith(".inner."):
            return views.get((table.database, table.name.removeprefix(".inner.")))
        return None

    def _check_targets(self, items: list[_Item]) -> None:
        conflicts: list[str] = []
        missing: list[str] = []
        existing = self._existing([i for i in items if i.owner_view is None])
        partial = bool(self.options.partitions)
        for item in items:
            if item.owner_view is None:
                current = existing.get((item.database, item.name))
            elif self.options.data_only or partial:
                # A view these keep keeps its inner table, and the data in it.
                current = self._kept_inner_table(item)
                if current is None:
                    continue
            else:
                continue  # created by its view; checked through it
            item.existing = current
            if self.options.data_only:
                if item.entry.has_data and current is None:
                    missing.append(item.target)
                elif (
                    item.entry.has_data and self._occupied(item) and not self.options.drop_existing
                ):
                    conflicts.append(
                        f"{item.target} has data{' in those partitions' if partial else ''}"
                        + _partial_hint(current)
                    )
                continue
            if current is None or (self.options.drop_existing and not partial):
                continue
            if partial and current.has_data and item.entry.has_data:
                # Restoring some partitions into a table that exists: only overlap conflicts.
                if self._occupied(item) and not self.options.drop_existing:
                    conflicts.append(
                        f"{item.target} has data in those partitions{_partial_hint(current)}"
                    )
            elif partial:
                continue  # views and other objects that exist are simply kept
            elif not item.entry.has_data or not current.has_data:
                conflicts.append(f"{item.target} exists")
            elif self.server.count(item.database, item.name):
                conflicts.append(f"{item.target} has data{_partial_hint(current)}")
        if missing:
            raise RestoreConflict(
                detail=f"--data-only needs existing tables; missing: {', '.join(missing)}"
            )
        if conflicts:
            raise RestoreConflict(detail="target exists: " + "; ".join(conflicts))

    def _reused(self, item: _Item) -> bool:
        """Whether parts go into the table that is there, not one made from the backup's definition.

        ``--drop-existing`` drops and recreates a table, except with
        ``--data-only`` (truncated) or ``--partitions`` (partitions dropped).
        """
        if item.existing is None or not item.entry.has_data or not self._parts(item.entry):
            return False
        return (
            self.options.data_only
            or bool(self.options.partitions)
            or not self.options.drop_existing
        )

    def _check_column_types(self, items: list[_Item]) -> None:
        """Refuse, before anything changes, parts whose columns have other types than the reused table's.

        ATTACH PART does not compare them: UInt64 parts in a String column
        attach without an error, and 18.16 reads them as garbage strings
        (docs/operations.md). Each distinct columns.txt (parts of one schema
        share one file id) is read once, and compared once per table: per
        part, 1,000 parts of 200 columns took 8 s of a 20 s restore.
        """
        if self.options.schema_only or not self.options.check_column_types:
            return
        reused = [item for item in items if self._reused(item)]
        # Per table, the distinct columns.txt of its parts, each with the first part holding it.
        distinct: list[dict[bytes, tuple[mf.Part, mf.FileContent]]] = []
        for item in reused:
            found: dict[bytes, tuple[mf.Part, mf.FileContent]] = {}
            for part, content in self._columns_files(item):
                found.setdefault(content.id, (part, content))
            distinct.append(found)
        contents = {cid: content for found in distinct for cid, (_, content) in found.items()}
        table_columns: dict[int, dict[str, str]] = {}
        by_table: dict[int, dict[str, TypeConflict]] = {}  # first conflict per column
        for batch in _batches_of_bytes(list(contents.values()), COLUMNS_TXT_BATCH):
            texts = self._read_files(batch)
            for index, item in enumerate(reused):
                for cid, (part, _) in distinct[index].items():
                    if cid not in texts:
                        continue
                    try:
                        columns = parse_columns_txt(texts[cid])
                    except ValueError as exc:
                        raise PartDamaged(
                            table=item.target, part=part.name, detail=f"columns.txt: {exc}"
                        ) from None
                    if index not in table_columns:
                        table_columns[index] = self.server.stored_columns(item.database, item.name)
                    for conflict in type_conflicts(columns, table_columns[index]):
                        by_table.setdefault(index, {}).setdefault(conflict.column, conflict)
        conflicts = [
            (reused[index], conflict)
            for index in sorted(by_table)
            for conflict in by_table[index].values()
        ]
        if conflicts:
            item, first = conflicts[0]
            others = len(conflicts) - 1
            raise ColumnTypeConflict(
                table=item.target,
                column=first.column,
                backup_type=first.backup_type,
                table_type=first.table_type,
                more=f" (and {others} more column{'s' if others > 1 else ''} of the restored "
                "tables differ)"
                if others
                else "",
            )

    def _columns_files(self, item: _Item) -> list[tuple[mf.Part, mf.FileContent]]:
        """The columns.txt of each part restored into ``item`` (a part without one has nothing to compare)."""
        found = []
        for part in self._parts(item.entry):
            listed = next((f for f in part.files if f.path == "columns.txt"), None)
            if listed is None:
                continue
            content = self.files[listed.file_id]
            if content.size > MAX_COLUMNS_TXT:
                raise PartDamaged(
                    table=item.target,
                    part=part.name,
                    detail=f"columns.txt of {content.size} bytes, more than ClickHouse writes",
                )
            found.append((part, content))
        return found

    def _read_files(self, contents: list[mf.FileContent]) -> dict[bytes, bytes]:
        """Small files of the backup in memory, by file id, following a repack once (``follow_repacks``)."""
        fetcher = ChunkFetcher(self.repo.store, threads=self.options.threads)
        read = functools.partial(read_files, fetcher, self.catalog.index.locate, contents)
        try:
            return read()
        except PackMissing as exc:
            return self._after_sync(exc, read)

    def _existing(self, items: list[_Item]) -> dict[tuple[str, str], TableInfo]:
        """Those of the targets that exist: a listing per database with many, else a lookup each.

        verify --restore plans one table at a time into a scratch database
        that grows as it goes; listing every table for each plan made a
        backup of 300 tables cost 300 listings of up to 600 (13 of 30 s).
        """
        by_database: dict[str, list[str]] = {}
        for item in items:
            by_database.setdefault(item.database, []).append(item.name)
        found: dict[tuple[str, str], TableInfo] = {}
        for database, names in by_database.items():
            if len(names) > LOOKUPS_BEFORE_LISTING:
                found.update({(t.database, t.name): t for t in self.server.tables(database)})
                continue
            for name in names:
                table = self.server.table(database, name)
                if table is not None:
                    found[(database, name)] = table
        return found

    def _parts(self, entry: mf.Table) -> list[mf.Part]:
        """The parts of a table this restore brings back (all, or those in --partitions)."""
        return [
            p
            for p in entry.parts
            if partition_selected(
                entry.database, entry.name, p.partition_id, p.partition, self.options.partitions
            )
        ]

    def _occupied(self, item: _Item) -> bool:
        """Whether the target already holds data where this restore would put some."""
        if not self.options.partitions:
            return self.server.count(item.database, item.name) > 0
        wanted = {p.partition_id for p in self._parts(item.entry)}
        present = {p.partition_id for p in self.server.parts(item.database, item.name)}
        return bool(wanted & present)

    # --- 2 + 3. run ----------------------------------------------------------------

    def run(self) -> RestoreReport:
        items = self.plan()
        report = RestoreReport(backup=self.manifest.name)
        report.warnings += self._unused_spec_warnings(items)
        report.warnings += [
            unmatched_warning(p, "the tables of the other patterns are restored")
            for p in self.unmatched_patterns
        ]
        report.warnings += [
            f"{item.target} restored empty: the backup holds its schema only "
            f"({item.entry.engine} engine rows are not backed up)"
            for item in items
            if holds_rows_not_backed_up(item.entry.engine)
            and (item.existing is None or self.options.drop_existing)
        ]
        outcomes = {
            id(i): TableOutcome(f"{i.entry.database}.{i.entry.name}", i.target, i.entry.engine)
            for i in items
        }
        if self.options.drop_existing and not self.options.schema_only:
            self._check_data_reachable(items)
        # First: they go to a staging directory, never live, and hold what a table
        # may need to be created on a new host (a Distributed table's cluster):
        # a restore that stops at such a table has staged them by then.
        self._restore_files(report)
        try:
            self._restore_tables(items, outcomes, report)
        except BaseException as exc:
            if note := self._replaced_note():
                exc.add_note(note)
            raise
        if self.options.access:  # after tables: grants name them
            if not self.manifest.access and self.manifest.access_files is None:
                report.notes.append(
                    "this backup holds no access entities: made without --rbac, or on a server "
                    "without SQL access control (18.16), whose users live in users.xml and come "
                    "back with --configs"
                )
            self._restore_objects(self.manifest.access, report)
        report.tables = [outcomes[id(i)] for i in items]
        return report

    def _restore_tables(
        self, items: list[_Item], outcomes: dict[int, TableOutcome], report: RestoreReport
    ) -> None:
        """Schema (and what --drop-existing replaces), then each table's data."""
        if not self.options.data_only:
            if self.options.functions:  # before tables: views may call them
                self._restore_objects(
                    [*self.manifest.functions, *self.manifest.named_collections], report
                )
            self._create_databases(items)
            if self.options.drop_existing:
                self._drop_existing(items)
            self._create_objects(items, outcomes, report)
        elif self.options.drop_existing:
            self._clear_targets(items)
        self._resolve_inner_tables(items)
        to_fill = [
            item
            for item in items
            if not self.options.schema_only and item.entry.has_data and self._parts(item.entry)
        ]
        # What was dropped and has no data to come back is back once created.
        filling = {id(item) for item in to_fill}
        self.put_back.update(id(item) for item in items if id(item) not in filling)
        if not self.options.schema_only:
            total = sum(p.bytes for i in items for p in self._parts(i.entry))
            self.progress.start(total)
            fetcher = ChunkFetcher(self.repo.store, threads=self.options.threads)
            for item in to_fill:
                outcome = outcomes[id(item)]
                outcome.target = item.target
                self.progress.table(item.target)
                outcome.parts, outcome.rows = self._restore_data(item, fetcher)

    def _replaced_note(self) -> str:
        """What a stopped --drop-existing restore had destroyed and not put back, for its error line.

        Without it, a restore stopped after the drop and before the attach
        said "partial work was cleaned up" of tables it had emptied.
        """
        gone = sorted(
            ((item, how) for key, (item, how) in self.replaced.items() if key not in self.put_back),
            key=lambda replaced: replaced[0].target,
        )
        if not gone:
            return ""
        dropped = [item.target for item, how in gone if how == "dropped"]
        emptied = [item.target for item, how in gone if how == "truncated"]
        partitions = [item.target for item, how in gone if how == "partitions"]
        said = []
        if dropped:
            said.append(f"dropped {', '.join(dropped)}")
        if emptied:
            said.append(f"truncated {', '.join(emptied)}")
        if partitions:
            said.append(f"dropped the partitions it restores of {', '.join(partitions)}")
        return (
            f"--drop-existing had {' and '.join(said)}, whose data the restore had not put back: "
            "the old data is gone; run the same restore again to restore the backup's"
        )

    def _unused_spec_warnings(self, items: list[_Item]) -> list[str]:
        if not self.unused_specs:
            return []
        # Releases before `--partitions` recorded no partition values (FORMAT.md:
        # '' if unknown), so only ids can match their parts.
        unrecorded = any(p.partition == "" for i in items for p in i.entry.parts)
        hint = (
            f"; backup {self.manifest.name} does not record partition values (an older "
            "casbackup made it): name its partitions by id, as its part names begin "
            f"(casbackup show {self.manifest.name} --parts)"
            if unrecorded
            else ""
        )
        return [
            f"--partitions {spec!r} chose no partition of the tables restored{hint}"
            for spec in self.unused_specs
        ]

    def _restore_objects(self, objects: list[mf.ServerObject], report: RestoreReport) -> None:
        if not objects:
            return
        done = restore_objects(
            self.server,
            objects,
            on_existing=self.options.on_existing,
            database_map=self.options.database_map,
        )
        report.objects += done.created
        report.skipped_objects += done.skipped
        report.warnings += [f"could not restore {what}: {why}" for what, why in done.failed]

    def _restore_files(self, report: RestoreReport) -> None:
        """Configs and access files go to a staging directory, never silently over live ones."""
        if self.options.configs and self.manifest.configs is None:
            report.notes.append(
                "this backup holds no configuration files (made without --configs?)"
            )
        for fileset, target in self._file_restores():
            restore = functools.partial(
                restore_directory,
                self.repo,
                self.catalog,
                self.files,
                fileset,
                target,
                overwrite=self.options.overwrite_files,
            )
            try:
                report.files += restore()
            except PackMissing as exc:
                # Met while fetching, before any file is renamed into place:
                # restore_directory has removed what it wrote.
                report.files += self._after_sync(exc, restore)
            if fileset is self.manifest.configs:
                self.staged_configs = target
            report.notes.append(
                f"{len(fileset.files)} files from {fileset.source} restored to {target}; copy what "
                "you need into place and restart ClickHouse for it to take effect"
            )

    def _clear_targets(self, items: list[_Item]) -> None:
        """--drop-existing with --data-only: empty the targets (only the chosen partitions)."""
        for item in items:
            if not item.entry.has_data or item.existing is None:
                continue
            if not self.options.partitions:
                self.replaced[id(item)] = (item, "truncated")
                self.server.truncate(item.database, item.name)
                continue
            for partition_id in sorted({p.partition_id for p in self._parts(item.entry)}):
                self.replaced[id(item)] = (item, "partitions")
                self.server.drop_partition(item.database, item.name, partition_id)

    def _create_databases(self, items: list[_Item]) -> None:
        recorded = {d.name: d for d in self.manifest.databases}
        for source in dict.fromkeys(i.entry.database for i in items):
            target = self.options.database_map.get(source, source)
            if self.server.database_exists(target):
                continue
            database = recorded.get(source)
            sql = (
                set_create_target(database.create_sql, target)
                if database is not None
                else f"CREATE DATABASE {quote_identifier(target)}"
            )
            self._execute(sql, target)

    def _drop_existing(self, items: list[_Item]) -> None:
        if self.options.partitions:  # only the chosen partitions go; tables stay
            self._clear_targets(items)
            return
        for item in reversed(items):  # dependents first
            if item.existing is None or item.owner_view is not None:
                continue
            kind = statement_kind(item.existing.create_sql) if item.existing.create_sql else "TABLE"
            self.replaced[id(item)] = (item, "dropped")
            self.server.drop_table(item.database, item.name, dictionary=kind == "DICTIONARY")
            item.existing = None

    def _create_objects(
        self, items: list[_Item], outcomes: dict[int, TableOutcome], report: RestoreReport
    ) -> None:
        """Create in recorded order; what fails for want of a dependency is retried after the rest.

        The recorded order already puts dependencies first (see ordering.py);
        the retries cover what no definition reveals (a dictionary's source
        named in a string, a view reading a table function). What still fails
        stops the restore, unless --ignore-dependencies, which reports it and
        restores everything else.
        """
        todo = [i for i in items if i.owner_view is None and i.existing is None]
        while todo:
            failed: list[tuple[_Item, ClickHouseError]] = []
            for item in todo:
                try:
                    self._create(item)
                    outcomes[id(item)].created = True
                except ClickHouseError as exc:
                    failed.append((item, exc))
            if len(failed) == len(todo):
                if not self.options.ignore_dependencies:
                    stuck, error = failed[0]
                    created = sum(1 for o in outcomes.values() if o.created)
                    raise RestoreFailed(
                        table=stuck.target,
                        detail=_creation_failed(
                            error.message,
                            self.manifest.name,
                            len(failed),
                            created,
                            self.staged_configs,
                        ),
                    )
                for item, error in failed:
                    report.warnings.append(f"not created {item.target}: {error.message}")
                    item.entry = item.entry.model_copy(
                        update={"has_data": False}
                    )  # nothing to attach to
                return
            todo = [item for item, _ in failed]

    def _create(self, item: _Item) -> None:
        entry = item.entry
        mapping = {k: v for k, v in self.options.database_map.items() if k != v}
        in_place = item.database == entry.database and not mapping
        renamed = rename_databases(entry.create_sql, mapping, self.backed_up)
        sql = rename_engine_database(rename_dictionary_source(renamed, mapping), mapping)
        uuid = entry.uuid if in_place and self.server.info.has_uuids else None
        statement = set_create_target(sql, item.database, item.name, uuid=uuid)
        try:
            self._execute(statement, item.target)
        except ClickHouseError:
            if uuid is None:
                raise
            # The original UUID is still taken (e.g. the table was renamed): use a new one.
            self._execute(set_create_target(sql, item.database, item.name), item.target)

    def _resolve_inner_tables(self, items: list[_Item]) -> None:
        for item in items:
            view = item.owner_view
            if view is None:
                continue
            view_db = self.options.database_map.get(view.database, view.database)
            name = self._inner_name(view)
            if name is None:
                raise RestoreFailed(
                    table=item.target, detail=f"materialized view {view_db}.{view.name} is missing"
                )
            item.database = view_db
            item.name = name

    def _inner_name(self, view: mf.Table) -> str | None:
        """The inner table of ``view``'s target, if that view exists."""
        view_db = self.options.database_map.get(view.database, view.database)
        restored = self.server.table(view_db, view.name)
        if restored is None:
            return None
        return f".inner_id.{restored.uuid}" if restored.uuid else f".inner.{view.name}"

    def _kept_inner_table(self, item: _Item) -> TableInfo | None:
        """The inner table an existing view of ``item`` has (resolved into ``item``), if any."""
        assert item.owner_view is not None
        name = self._inner_name(item.owner_view)
        found = None if name is None else self.server.table(item.database, name)
        if found is not None:
            item.name = found.name
        return found

    def _execute(self, sql: str, target: str) -> None:
        try:
            self.server.create(sql)
        except ClickHouseError as exc:
            raise ClickHouseError(detail=f"creating {target}: {exc.message}") from None

    # --- data -----------------------------------------------------------------------

    def _restore_data(self, item: _Item, fetcher: ChunkFetcher) -> tuple[int, int]:
        """All or nothing per table: every part is fetched and verified before any is attached."""
        info = self.server.table(item.database, item.name)
        if info is None or not info.data_paths:
            raise RestoreFailed(table=item.target, detail="table has no data path after creation")
        data_path = Path(info.data_paths[0])
        detached = data_path / "detached"
        with writing(detached):  # run as a user who may not write there: EACCES already here
            owner = os.stat(data_path)
            if not detached.exists():
                detached.mkdir()
                _chown(detached, owner.st_uid, owner.st_gid)
        parts = sorted(self._parts(item.entry), key=lambda p: (p.min_block, p.max_block, p.name))
        for part in parts:
            # Under its own name ATTACH would take the wrong part; renamed by an
            # ATTACH that a killed engine (chdb) left half-done, it makes ATTACH fail.
            for left in (detached / part.name, detached / f"{CH_ATTACHING}{part.name}"):
                if _exists(left):
                    raise DetachedPartExists(path=str(left))
        staged: list[tuple[mf.Part, Path]] = []
        clock = time.monotonic()
        try:
            batches = list(staging_batches(parts))
            located = self._locate(batches[0]) if batches else {}
            for batch, upcoming in zip(batches, [*batches[1:], []], strict=True):
                # Each batch's chunks are looked up once, a batch ahead, so that
                # the next batch's first reads start on the disk while this one is fetched.
                ahead = self._locate(upcoming)
                if upcoming:
                    fetcher.prefetch_first(ahead)
                try:
                    staged += self._stage_parts(
                        batch, detached, owner.st_uid, owner.st_gid, fetcher, located
                    )
                except PackMissing as exc:
                    again = functools.partial(
                        self._stage_relocated, batch, detached, owner.st_uid, owner.st_gid, fetcher
                    )
                    staged += self._after_sync(exc, again)
                    ahead = self._locate(upcoming)
                located = ahead
            if self.options.check_parts:
                self.checked[item.target] = self._check_staged(item, staged)
            # Physical rows (count.txt) of attached parts: exact even for parts
            # whose rows a lightweight DELETE masks (count() would not see those).
            log.info(
                "%s: fetched and verified %d parts in %.2f s",
                item.target,
                len(parts),
                time.monotonic() - clock,
            )
            clock = time.monotonic()
            expected = sum(p.rows for p in parts)
            # A --partitions restore into a live table: rows written meanwhile
            # into other partitions are not this restore's.
            counted = {p.partition_id for p in parts} if self.options.partitions else None
            before = self.server.part_rows(item.database, item.name, counted)
            with self._merges_paused(item, detached):
                self._attach_all(item, staged, detached)
                after = self.server.part_rows(item.database, item.name, counted)
            log.info("%s: attached in %.2f s", item.target, time.monotonic() - clock)
        finally:
            for _, temp in staged:
                shutil.rmtree(temp, ignore_errors=True)
        if after - before != expected:
            raise RestoreFailed(
                table=item.target,
                detail=f"{after - before} rows after attaching, the backup recorded {expected}",
            )
        return len(parts), expected

    def _check_data_reachable(self, items: list[_Item]) -> None:
        """Before ``--drop-existing`` destroys anything: every chunk indexed, every pack there.

        A backup whose data cannot be fetched would otherwise leave the tables
        it replaces empty (the drop comes first, the fetch after). One listing
        of the store's packs; no data is read, so a pack damaged inside still
        fails after the drop, which ``verify --read-data`` finds beforehand.
        """
        chunks = self._chunks_of(
            [p for i in items if i.entry.has_data for p in self._parts(i.entry)]
        )
        if not chunks:
            return
        for attempt in range(2):
            located = self.catalog.index.locate(chunks)
            in_store = {pack_id for pack_id, _ in self.repo.list_packs()}
            gone = {loc.pack_id for loc in located.values()} - in_store
            if not gone or attempt or not self._follow_repack(PackMissing(pack=min(gone).hex())):
                break
        if len(located) < len(chunks):
            raise IntegrityError(
                detail=f"backup {self.manifest.name}: {len(chunks) - len(located)} chunks the "
                "restored tables need are in no indexed pack (run `casbackup catalog sync`, "
                "then `casbackup verify`); nothing was dropped"
            )
        if gone:
            raise IntegrityError(
                detail=f"backup {self.manifest.name}: {len(gone)} packs the restored tables need "
                f"are missing from the store, e.g. {min(gone).hex()} (`casbackup verify` lists "
                "them); nothing was dropped"
            )

    def _follow_repack(self, missing: PackMissing) -> bool:
        """Sync the catalog once per restore, so chunks are located where they are now.

        The batch that met the missing pack has left nothing behind
        (``_stage_parts`` removes its directories), so it is staged again from
        the new locations. A pack still missing after the sync is really lost.
        """
        if not self.options.follow_repacks or self.synced:
            return False
        self.synced = True
        log.warning(
            "pack %s is gone from the store (another host's gc?): "
            "syncing the catalog with the repository and retrying",
            missing.fields.get("pack"),
        )
        for warning in sync(self.repo, self.catalog).warnings:
            log.warning("%s", warning)
        return True

    def _after_sync(self, missing: PackMissing, again: Callable[[], _T]) -> _T:
        """``again`` once the catalog is synced (``_follow_repack``), or ``missing`` raised.

        A pack still missing after the sync is lost, and says so: the advice
        of ``PackMissing``, a sync, was just followed.
        """
        if not self._follow_repack(missing):
            raise missing
        try:
            return again()
        except PackMissing as still:
            raise PackLost(pack=still.fields.get("pack")) from None

    def _stage_relocated(
        self, parts: list[mf.Part], detached: Path, uid: int, gid: int, fetcher: ChunkFetcher
    ) -> list[tuple[mf.Part, Path]]:
        """``_stage_parts`` with the chunks located anew (a sync moved them to their new packs)."""
        return self._stage_parts(parts, detached, uid, gid, fetcher, self._locate(parts))

    def _chunks_of(self, parts: list[mf.Part]) -> set[bytes]:
        return {cid for part in parts for f in part.files for cid in self.files[f.file_id].chunks}

    def _locate(self, parts: list[mf.Part]) -> Mapping[bytes, ChunkLocation]:
        return self.catalog.index.locate(self._chunks_of(parts)) if parts else {}

    def _stage_parts(
        self,
        parts: list[mf.Part],
        detached: Path,
        uid: int,
        gid: int,
        fetcher: ChunkFetcher,
        located: Mapping[bytes, ChunkLocation],
    ) -> list[tuple[mf.Part, Path]]:
        """Write several parts' files, verified, each into a temporary directory under detached/.

        One fetch for the batch: its chunks' ranged reads are coalesced and run
        in parallel across parts, so a table of many small parts does not cost
        one round trip per part (what dominates on S3).
        """
        staged: list[tuple[mf.Part, Path]] = []
        try:
            targets = []
            for part in parts:
                temp = detached / temp_part_name(part.name)
                with writing(temp):
                    temp.mkdir(mode=0o750)
                staged.append((part, temp))
                targets += [
                    FileTarget(temp / f.path, self.files[f.file_id], f.mode) for f in part.files
                ]
            # ``located`` holds exactly these files' chunks (_locate of the same parts).
            written = write_files(fetcher, lambda _: located, targets)
            self.progress.advance(written)
            for _, temp in staged:
                with writing(temp):
                    _chown_tree(temp, uid, gid)
        except BaseException:
            for _, temp in staged:
                shutil.rmtree(temp, ignore_errors=True)
            raise
        return staged

    def _check_staged(self, item: _Item, staged: list[tuple[mf.Part, Path]]) -> int:
        """Refuse the table if a staged file is not what ClickHouse wrote; returns parts not checkable.

        Files read back from the staging directories, so what is checked is
        what ATTACH will find, as CHECK TABLE would check it afterwards.
        """
        clock, unchecked, nbytes = time.monotonic(), 0, 0
        for part, temp in staged:
            found = check_part(temp)
            if found.problems:
                shown = "; ".join(found.problems[:3])
                more = len(found.problems) - 3
                raise PartDamaged(
                    table=item.target,
                    part=part.name,
                    detail=shown + (f" (and {more} more)" if more > 0 else ""),
                )
            unchecked += not found.has_checksums
            nbytes += found.bytes
        log.info(
            "%s: checked %d bytes against checksums.txt in %.2f s",
            item.target,
            nbytes,
            time.monotonic() - clock,
        )
        return unchecked

    def _attach_all(self, item: _Item, staged: list[tuple[mf.Part, Path]], detached: Path) -> None:
        """ATTACH the staged parts in order; a stop part-way says what the table now holds.

        What is attached stays: the parts carry new block numbers, so telling
        them from rows written meanwhile is not possible in general. The
        partial marker stays with them until a restore of the whole table, or
        of the partitions it lists, (``--drop-existing``) or `clean` reports it.
        """
        restoring = {part.partition_id for part, _ in staged}
        for marker, alive in stale_markers(detached, PARTIAL_PREFIX):
            # This restore replaces what such a marker was about: the planning
            # found those partitions empty, or --drop-existing emptied them.
            about = marked_partitions(marker)
            if not alive and (not self.options.partitions or (about and about <= restoring)):
                shutil.rmtree(marker, ignore_errors=True)
        progress = _Attaching(
            len(staged),
            detached / tagged_name(PARTIAL_PREFIX),
            frozenset(restoring) if self.options.partitions else frozenset(),
        )
        try:
            while staged:
                part, temp = staged[0]
                self._attach(item, part, temp, detached / part.name, progress)
                staged.pop(0)
        except BaseException as exc:
            if progress.done:  # restored whole, or the note below says what it holds
                self.put_back.add(id(item))
            if progress.done in (0, progress.total):  # nothing attached, or the last part too
                progress.finished()
            elif progress.done and not item.database.startswith(SCRATCH_PREFIX):
                # (verify's scratch copies are dropped on the way out: nothing to say of them)
                exc.add_note(
                    f"{item.target} holds {progress.done} of the {progress.total} parts this "
                    "restore attaches: run the same restore again with --drop-existing to "
                    "restore it whole"
                )
            raise
        progress.finished()
        self.put_back.add(id(item))  # all attached (a row count that differs says so itself)

    def _attach(
        self, item: _Item, part: mf.Part, temp: Path, final: Path, progress: _Attaching
    ) -> None:
        marker = final.parent / temp_part_name(part.name, ATTACHING_PREFIX)
        with writing(marker):
            marker.mkdir()
        try:
            # A signal taken between the rename and ATTACH would leave the part
            # under its final name and remove the marker that says whose it is:
            # neither `clean` nor the next restore could then remove it.
            with interrupts.deferred():
                with writing(final):
                    os.rename(temp, final)
                progress.attaching()
                try:
                    self.server.attach_part(item.database, item.name, part.name)
                except ClickHouseError as exc:
                    shutil.rmtree(final, ignore_errors=True)
                    raise RestoreFailed(
                        table=item.target, detail=f"ATTACH PART {part.name}: {exc.message}"
                    ) from None
                progress.attached()  # before a deferred signal is delivered
        finally:
            with contextlib.suppress(OSError):
                marker.rmdir()

    @contextlib.contextmanager
    def _merges_paused(self, item: _Item, detached: Path) -> Iterator[None]:
        """Stop the table's merges while its parts are attached and counted.

        The server keeps merges stopped until told otherwise or restarted, so
        a restore killed in between would leave the table never merging
        (parts pile up until inserts fail with "Too many parts"). A marker
        under detached/ names the process for as long as merges may be
        stopped, and `clean` resumes them when that process is gone.
        """
        name = qualified(item.database, item.name)
        marker = detached / tagged_name(MERGES_PAUSED_PREFIX)
        with writing(marker):
            marker.mkdir()
        # Whether the marker may go: merges running again, never stopped, or
        # left stopped on purpose (verify's scratch tables, dropped at its end).
        settled = False
        try:
            try:
                self.server.execute(f"SYSTEM STOP MERGES {name}")
            except ClickHouseError:
                settled = True  # servers without per-table STOP MERGES: the count may race a merge
            try:
                yield
            finally:
                if self.options.keep_merges_stopped or any(
                    alive
                    for other, alive in stale_markers(detached, MERGES_PAUSED_PREFIX)
                    if other != marker
                ):
                    # Left stopped on purpose, or for another restore of this
                    # table still attaching (--partitions), which starts them.
                    settled = True
                elif not settled:
                    with contextlib.suppress(ClickHouseError):
                        self.server.execute(f"SYSTEM START MERGES {name}")
                        settled = True
        finally:
            if settled:  # else `clean` tries again
                with contextlib.suppress(OSError):
                    marker.rmdir()


# A batch of parts is staged with one fetch (write_files holds at most
# MAX_OPEN_FILES of its files open at once, so a bigger part needs no other
# bound); the file count keeps a batch of many small parts to one such group.
STAGE_BATCH_BYTES = 256 * 1024 * 1024
STAGE_BATCH_FILES = 400


def staging_batches(parts: list[mf.Part]) -> Iterator[list[mf.Part]]:
    """Parts in order, grouped up to STAGE_BATCH_BYTES and STAGE_BATCH_FILES (a big part alone)."""
    batch: list[mf.Part] = []
    size = files = 0
    for part in parts:
        if batch and (
            size + part.bytes > STAGE_BATCH_BYTES or files + len(part.files) > STAGE_BATCH_FILES
        ):
            yield batch
            batch, size, files = [], 0, 0
        batch.append(part)
        size += part.bytes
        files += len(part.files)
    if batch:
        yield batch


def _creation_failed(
    message: str, backup: str, failed: int, created: int, configs: Path | None
) -> str:
    """What a restore that could not create a table leaves, and the ways on.

    Everything it created is still empty (no part is attached before every
    object exists), so running it again with --drop-existing loses nothing.
    A cluster, macro or dictionary missing on a new host is usually in the
    server's config files, which the backup may hold (``configs``: where
    this restore staged them, if it did).
    """
    others = f" (and {failed - 1} more could not be created)" if failed > 1 else ""
    staged = (
        f"the backup's are staged in {configs} (leave --configs out when you run the restore "
        "again, or add --overwrite)"
        if configs is not None
        else f"`casbackup restore {backup} --no-tables --configs` stages the backup's"
    )
    return (
        f"{message}{others}; {created} other "
        + ("table or view was" if created == 1 else "tables and views were")
        + " created, still empty: "
        "no data was attached. What the server lacks (a cluster, a macro) may be in its "
        f"config files: {staged}; once it is fixed, run the restore again with "
        "--drop-existing, or restore everything else now with --ignore-dependencies"
    )


def _partial_hint(table: TableInfo | None) -> str:
    if table is None or not left_partial(table):
        return ""
    return " (only some of it: a restore stopped while attaching)"


def _exists(path: Path) -> bool:
    with writing(path):
        return path.exists()


def _chown(path: Path, uid: int, gid: int) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give restored files the owner of the table directory (ClickHouse must be able to write them)."""
    if (os.geteuid(), os.getegid()) == (uid, gid):
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        _chown(Path(dirpath), uid, gid)
        for name in filenames:
            _chown(Path(dirpath) / name, uid, gid)
