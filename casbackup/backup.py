"""`casbackup create`: FREEZE each table, store its parts, commit one manifest.

For each selected MergeTree table, one at a time: FREEZE WITH NAME (a name
unique to this run), walk the frozen parts on every disk, store every file
through the repository, then release that table's shadow before the next
table, so at most one table's worth of hard links pins disk space. The whole
run's shadow is removed again in a ``finally`` (errors, Ctrl-C, SIGTERM all
arrive there); ``casbackup clean`` handles a run killed with SIGKILL.
Views, dictionaries and other engines are recorded as schema only.

Tables are recorded in creation order (dependencies first), so restore can
replay them as they are.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from casbackup.catalog import Catalog
from casbackup.catalog.backups import previous_fingerprints
from casbackup.catalog.reuse import PreviousFile, previous_files
from casbackup.clickhouse.checksums import FileChecksum
from casbackup.clickhouse.fingerprint import RowHash, part_fingerprints, row_hash
from casbackup.clickhouse.freeze import (
    FreezeName,
    remove_run_shadow,
    remove_table_shadow,
    table_shadow_dirs,
)
from casbackup.clickhouse.part_check import check_part
from casbackup.clickhouse.parts import (
    DiskFile,
    PartName,
    frozen_part_dirs,
    part_checksums,
    part_files,
    read_count,
)
from casbackup.clickhouse.server import SCRATCH_PREFIX, ClickHouseServer, PartInfo, TableInfo
from casbackup.errors import ClickHouseError, NothingSelected, UnsupportedTable, UsageError
from casbackup.ordering import creation_order
from casbackup.repo import manifest as mf
from casbackup.repo.archiver import StoredFile
from casbackup.repo.chunker import Chunker, chunk_id, file_id
from casbackup.repo.repository import Repository
from casbackup.selection import (
    matches,
    partition_selected,
    select,
    spec_selects,
    unmatched,
    unmatched_warning,
)
from casbackup.server_state import (
    access_directory,
    capture_access,
    capture_functions,
    capture_named_collections,
    store_directory,
)
from casbackup.snapshot import ServerState, SnapshotWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupOptions:
    name: str | None = None
    tables: tuple[str, ...] = ("*.*",)
    exclude: tuple[str, ...] = ()
    schema_only: tuple[str, ...] = ()  # tables without parts backed up as schema on purpose
    compression_level: int = 1
    pack_size: int = 32 * 1024 * 1024
    threads: int = 2
    upload_threads: int = 2
    rehash: bool = False  # read every file even if it is known unchanged
    # Row fingerprints of new parts (verify --restore); see takes_fingerprints.
    fingerprints: bool | Literal["auto"] = False
    partitions: tuple[str, ...] = ()  # only these partitions ("P" or "db.table:P"), by id or value
    access: bool = False  # also access entities (users, roles, grants) and the access directory
    access_path: Path | None = None  # where the access directory is, if the server does not say
    configs: Path | None = None  # also this config directory (e.g. /etc/clickhouse-server)


@dataclass
class TableReport:
    table: str
    engine: str
    parts: int = 0
    rows: int = 0
    bytes: int = 0
    skipped: str | None = None


@dataclass
class BackupReport:
    name: str
    manifest: mf.Manifest
    tables: list[TableReport] = field(default_factory=list)
    # Something asked for was not backed up, or the repository holds damage
    # (a backup or pack the catalog sync left out).
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth saying, but nothing was missed


class BackupProgress:
    """Callbacks the CLI renders; the default does nothing."""

    def start(self, tables: list[TableInfo], total_bytes: int) -> None: ...

    def table(self, table: TableInfo) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def table_done(self, report: TableReport) -> None: ...


def default_backup_name(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M%SZ")


def backup_candidates(all_tables: list[TableInfo]) -> list[TableInfo]:
    """The tables a backup may choose from: not verify's scratch copies."""
    return [t for t in all_tables if not t.database.startswith(SCRATCH_PREFIX)]


def select_tables(
    candidates: list[TableInfo], include: tuple[str, ...], exclude: tuple[str, ...]
) -> list[TableInfo]:
    """Candidates matching the patterns, plus the inner tables of selected materialized views."""
    chosen = select(candidates, include, exclude)
    chosen_keys = {(t.database, t.name) for t in chosen}
    for view in [t for t in chosen if t.engine == "MaterializedView" and t.uuid]:
        inner = (view.database, f".inner_id.{view.uuid}")
        if inner not in chosen_keys:
            chosen.extend(t for t in candidates if (t.database, t.name) == inner)
            chosen_keys.add(inner)
    for view in [t for t in chosen if t.engine == "MaterializedView"]:
        inner = (view.database, f".inner.{view.name}")
        if inner not in chosen_keys:
            chosen.extend(t for t in candidates if (t.database, t.name) == inner)
            chosen_keys.add(inner)
    return chosen


@dataclass
class BackupPlan:
    tables: list[TableInfo]  # in creation order (dependencies first)
    unmatched: list[str]  # include patterns that match no table (selection.unmatched)

    def warnings(self) -> list[str]:
        return [
            unmatched_warning(p, "the other patterns' tables are backed up") for p in self.unmatched
        ]


def plan_backup(
    server: ClickHouseServer, include: tuple[str, ...], exclude: tuple[str, ...]
) -> BackupPlan:
    """The tables `create` backs up, in creation order, and the patterns that chose none."""
    candidates = backup_candidates(server.tables())
    tables = select_tables(candidates, include, exclude)
    if not tables:
        raise NothingSelected(patterns=", ".join(include))
    edges = [
        (needed, (t.database, t.name)) for t in tables for needed in t.loading_dependencies
    ] + [((t.database, t.name), dependent) for t in tables for dependent in t.dependents]
    return BackupPlan(
        [tables[i] for i in creation_order(tables, edges)],
        unmatched(candidates, include),
    )


class BackupService:
    def __init__(
        self,
        server: ClickHouseServer,
        repo: Repository,
        catalog: Catalog,
        options: BackupOptions,
        progress: BackupProgress | None = None,
    ) -> None:
        self.server = server
        self.repo = repo
        self.catalog = catalog
        self.options = options
        self.progress = progress or BackupProgress()
        self.notes: list[str] = []
        self._specs_used: set[str] = set()  # --partitions specs that chose some partition
        self._source_damage: list[str] = []  # --rehash: parts whose files fail checksums.txt

    def run(self) -> BackupReport:
        # Directories asked for are checked before anything is frozen or stored.
        for flag, directory in (
            ("--configs-path", self.options.configs),
            ("--access-path", self.options.access_path if self.options.access else None),
        ):
            if directory is not None and not directory.is_dir():
                raise UsageError(detail=f"{flag}: {directory} is not a directory")
        plan = plan_backup(self.server, self.options.tables, self.options.exclude)
        tables = plan.tables
        name = self.options.name or default_backup_name()
        wanted_databases = {t.database for t in tables}
        databases = [
            mf.Database(name=d.name, engine=d.engine, create_sql=d.create_sql)
            for d in self.server.databases()
            if d.name in wanted_databases
        ]
        self.progress.start(tables, 0)
        freeze_name = FreezeName.for_this_process()
        reports: list[TableReport] = []
        warnings: list[str] = plan.warnings()
        recorded: list[mf.Table] = []
        with SnapshotWriter(
            self.repo,
            self.catalog,
            name,
            compression_level=self.options.compression_level,
            pack_size=self.options.pack_size,
            threads=self.options.threads,
            upload_threads=self.options.upload_threads,
        ) as snapshot:
            warnings += snapshot.sync_report.warnings  # backups and packs left out of the catalog
            try:
                for table in tables:
                    self.progress.table(table)
                    try:
                        entry, report = self._backup_table(snapshot, table, freeze_name)
                    except (ClickHouseError, UnsupportedTable) as exc:
                        if self.server.table(
                            table.database, table.name
                        ) is not None and not isinstance(exc, UnsupportedTable):
                            raise
                        # Dropped while we worked, or data we cannot back up: skip it, loudly.
                        report = TableReport(table.qualified, table.engine, skipped=exc.message)
                        warnings.append(f"skipped {table.qualified}: {exc.message}")
                        entry = None
                    reports.append(report)
                    if entry is not None:
                        recorded.append(entry)
                    if table.data_left_out:
                        said = (
                            f"schema only: {table.qualified} ({table.engine} engine: casbackup "
                            "backs up the rows of MergeTree-family tables only)"
                        )
                        if matches(table.database, table.name, self.options.schema_only):
                            self.notes.append(said)  # [backup] schema_only: as intended
                        else:
                            warnings.append(said)
                    self.progress.table_done(report)
            finally:
                remove_run_shadow(self.server, freeze_name)
            warnings += self._source_damage
            warnings += [
                f"--partitions {spec!r} chose no partition of the tables backed up"
                for spec in self.options.partitions
                if spec not in self._specs_used
            ]
            extras, notes = self._server_state(snapshot)
            warnings += notes
            manifest = snapshot.commit(
                databases, recorded, clickhouse_version=self.server.info.version, extras=extras
            )
        return BackupReport(
            name=name, manifest=manifest, tables=reports, warnings=warnings, notes=self.notes
        )

    def _server_state(self, snapshot: SnapshotWriter) -> tuple[ServerState, list[str]]:
        """Functions and named collections always; access control and configs when asked."""
        warnings: list[str] = []
        collections, hidden = capture_named_collections(self.server)
        warnings += hidden
        state = ServerState(
            functions=capture_functions(self.server),
            named_collections=collections,
            partitions=list(self.options.partitions),
        )
        if self.options.access:
            captured = capture_access(self.server)
            if captured is None:
                self.notes.append(
                    f"ClickHouse {self.server.info.version} has no SQL access control (users live "
                    "in users.xml): no access entities to back up; use --configs for users.xml"
                )
            else:
                state.access, hidden = captured
                warnings += hidden
            directory = self.options.access_path or access_directory(self.server)
            if directory is not None and directory.is_dir():
                state.access_files = store_directory(snapshot, directory, warnings)
        if self.options.configs is not None:
            state.configs = store_directory(snapshot, self.options.configs, warnings)
        return state, warnings

    # --- one table -------------------------------------------------------------

    def _backup_table(
        self, snapshot: SnapshotWriter, table: TableInfo, freeze_name: FreezeName
    ) -> tuple[mf.Table, TableReport]:
        depends_on = sorted(set(table.loading_dependencies))
        if not table.has_data:
            entry = mf.Table(
                database=table.database,
                name=table.name,
                engine=table.engine,
                create_sql=table.create_sql,
                uuid=table.uuid,
                has_data=False,
                depends_on=depends_on,
            )
            return entry, TableReport(table.qualified, table.engine)
        for data_path in table.data_paths:
            disk = self.server.disk_of(data_path)
            if not disk.is_local:
                raise UnsupportedTable(
                    table=table.qualified,
                    reason=f"its data is on object-storage disk {disk.name!r}, which casbackup does not back up yet",
                )
        clock = time.monotonic()
        self.server.freeze(table.database, table.name, freeze_name.value)
        log.info("%s: FREEZE %.2f s", table.qualified, time.monotonic() - clock)
        try:
            # Read the definition after FREEZE: it is the one the frozen parts match.
            current = self.server.table(table.database, table.name) or table
            known_parts = {
                p.name: p for p in self.server.parts(table.database, table.name, active_only=False)
            }
            clock = time.monotonic()
            with self._fingerprinting(snapshot, table, freeze_name, known_parts) as fingerprints:
                parts = self._store_parts(snapshot, table, freeze_name, known_parts)
                log.info("%s: store %.2f s", table.qualified, time.monotonic() - clock)
            parts = [
                p.model_copy(update={"fingerprint": fingerprints[p.name]})
                if p.name in fingerprints
                else p
                for p in parts
            ]
            log.info("%s: store and fingerprints %.2f s", table.qualified, time.monotonic() - clock)
        finally:
            remove_table_shadow(self.server, table, freeze_name)
        parts.sort(key=lambda p: (p.min_block, p.max_block, p.name))
        entry = mf.Table(
            database=table.database,
            name=table.name,
            engine=current.engine,
            create_sql=current.create_sql,
            uuid=current.uuid,
            has_data=True,
            rows=sum(p.rows for p in parts),
            bytes=sum(p.bytes for p in parts),
            depends_on=depends_on,
            parts=parts,
        )
        return entry, TableReport(
            table.qualified, table.engine, len(parts), entry.rows, entry.bytes
        )

    def _store_parts(
        self,
        snapshot: SnapshotWriter,
        table: TableInfo,
        freeze_name: FreezeName,
        known: dict[str, PartInfo],
    ) -> list[mf.Part]:
        frozen = [
            (disk_name, part_dir, part_files(part_dir), part_checksums(part_dir))
            for disk_name, part_dir in self._selected_parts(table, freeze_name, known)
        ]
        everything = [(f, sums.get(f.relative)) for _, _, files, sums in frozen for f in files]
        stored = {} if self.options.rehash else self._unchanged_files(snapshot, table, everything)
        to_read = [f.path for f, _ in everything if f.path not in stored]
        for path, result in snapshot.archiver.store_files(to_read):
            snapshot.add_file(result)
            stored[path] = result
            self.progress.advance(result.size)
        if self.options.rehash:
            self._check_source(table, [part_dir for _, part_dir, _, sums in frozen if sums])
        parts = []
        for disk_name, part_dir, files, sums in frozen:
            entries = [
                mf.PartFile(
                    path=f.relative,
                    file_id=stored[f.path].file_id,
                    size=stored[f.path].size,
                    mode=f.mode,
                    dev=f.dev,
                    ino=f.ino,
                    mtime_ns=f.mtime_ns,
                    ch_checksum=checksum.hash if (checksum := sums.get(f.relative)) else None,
                )
                for f in files
            ]
            parts.append(
                self._describe_part(table, disk_name, part_dir, entries, known.get(part_dir.name))
            )
        return parts

    def _check_source(self, table: TableInfo, part_dirs: list[Path]) -> None:
        """``--rehash`` reads every file: check the parts against their checksums.txt as well.

        A file that changed on disk since ClickHouse wrote it (bit rot, a tool
        writing into the data directory) is stored as read, and ClickHouse
        would refuse the restored part; with the warning the operator learns
        it now, while older backups still hold the good bytes. Without
        ``--rehash`` unchanged files are not read at all (their stored content
        is the one recorded), and new files are what ClickHouse just wrote.
        The check reads each part once more, from the page cache as a rule.
        """
        for part_dir in part_dirs:
            found = check_part(part_dir)
            if found.problems:
                self._source_damage.append(
                    f"{table.qualified} part {part_dir.name}: {found.problems[0]}"
                    + (f" (and {len(found.problems) - 1} more)" if len(found.problems) > 1 else "")
                    + "; backed up as it is on disk"
                )

    @contextlib.contextmanager
    def _fingerprinting(
        self,
        snapshot: SnapshotWriter,
        table: TableInfo,
        freeze_name: FreezeName,
        known: dict[str, PartInfo],
    ) -> Iterator[dict[str, mf.PartFingerprint]]:
        """Row fingerprints of the frozen parts, for `verify --restore` to compare against.

        Cost follows change, not size: a part whose content (its checksums.txt)
        an earlier backup fingerprinted reuses that fingerprint, even when a
        mutation renamed it; only new parts are scanned. The scan is the
        server's work: it runs on a second connection (a second session, for
        the embedded engine) while this process stores the parts. The
        dictionary yielded is complete when the block ends.
        """
        if not self.takes_fingerprints:
            yield {}
            return
        hashing = row_hash(self.server, table.database, table.name)
        result, scan = self._reusable_fingerprints(snapshot, table, freeze_name, known, hashing)
        fork = self.server.clone() if scan else None
        if fork is None:
            result.update(self._scan(self.server, table, scan, hashing))
            yield result
            return
        with ThreadPoolExecutor(1, thread_name_prefix="casbackup-fingerprint") as pool:
            future = pool.submit(self._scan, fork, table, scan, hashing)
            try:
                yield result
                result.update(future.result())
            finally:
                fork.close()  # also unblocks the scan if we are leaving early

    @property
    def takes_fingerprints(self) -> bool:
        """Whether this backup fingerprints its new parts: only when configured to (``true``).

        verify --restore checks every restored file against its part's
        checksums.txt itself (clickhouse.part_check), on every server version;
        ClickHouse wrote that file from the data when it made the part, and
        the backup reads it fresh every time and restores it byte for byte.
        A part that passes is the frozen part, which is all the row
        fingerprint proved, for a full server-side read of every new part at
        backup time: on the churn benchmark a third to a half of a full
        backup's time. The fingerprint skips parts without checksums.txt too,
        so it covers nothing the check does not. ``"auto"``, the default of
        the release before, took them only on servers without CHECK TABLE;
        it now means ``false``.
        """
        return self.options.fingerprints is True

    @staticmethod
    def _scan(
        server: ClickHouseServer, table: TableInfo, parts: list[str], hashing: RowHash
    ) -> dict[str, mf.PartFingerprint]:
        found = part_fingerprints(server, table.database, table.name, parts, hashing)
        return {
            name: mf.PartFingerprint(rows=fp.rows, hash=fp.hash, expression_id=hashing.id)
            for name, fp in found.items()
        }

    def _reusable_fingerprints(
        self,
        snapshot: SnapshotWriter,
        table: TableInfo,
        freeze_name: FreezeName,
        known: dict[str, PartInfo],
        hashing: RowHash,
    ) -> tuple[dict[str, mf.PartFingerprint], list[str]]:
        """Fingerprints earlier backups recorded for these parts' contents, and the parts to scan.

        Only those summed by the same expression: after ``ADD COLUMN`` the
        parts are unchanged but their rows hash differently.
        """
        chunker = Chunker(snapshot.repo.config.chunker)
        keys: dict[str, bytes] = {}
        for _disk, part_dir in self._selected_parts(table, freeze_name, known):
            try:
                data = (part_dir / "checksums.txt").read_bytes()
            except OSError:
                continue
            keys[part_dir.name] = file_id([chunk_id(c) for c in chunker.split_bytes(data)])
        previous = previous_fingerprints(self.catalog.db, set(keys.values()), hashing.id)
        result = {
            name: mf.PartFingerprint(
                rows=previous[key][0], hash=previous[key][1], expression_id=hashing.id
            )
            for name, key in keys.items()
            if key in previous
        }
        return result, sorted(name for name in keys if name not in result)

    def _unchanged_files(
        self,
        snapshot: SnapshotWriter,
        table: TableInfo,
        files: list[tuple[DiskFile, FileChecksum | None]],
    ) -> dict[Path, StoredFile]:
        """Files a committed backup already stored, recognised without reading them.

        Same inode (device, inode, size, mtime) *and* the same ClickHouse
        checksum as recorded then, and every chunk still in a live pack.
        Files checksums.txt does not list (itself, columns.txt...) are small
        and always read.
        """
        candidates = [(f, c) for f, c in files if c is not None and c.size == f.size]
        previous = previous_files(
            self.catalog.db,
            [(f.dev, f.ino, f.size, f.mtime_ns) for f, _ in candidates],
            (table.database, table.name),
        )
        matched: list[tuple[DiskFile, PreviousFile]] = []
        for f, checksum in candidates:
            before = previous.get((f.dev, f.ino, f.size, f.mtime_ns))
            if before is not None and checksum is not None and before.ch_checksum == checksum.hash:
                matched.append((f, before))
        live = self.catalog.index.known(sorted({c for _, before in matched for c in before.chunks}))
        reused: dict[Path, StoredFile] = {}
        for f, before in matched:
            if all(c in live for c in before.chunks):
                stored = StoredFile(before.file_id, before.size, before.chunks, 0, 0)
                snapshot.add_file(stored)
                reused[f.path] = stored
                self.progress.advance(f.size)
        return reused

    def _selected_parts(
        self, table: TableInfo, freeze_name: FreezeName, known: dict[str, PartInfo]
    ) -> list[tuple[str, Path]]:
        """(disk, directory) of every frozen part in the selected partitions."""
        selected = []
        for disk, shadow_dir in table_shadow_dirs(self.server, table, freeze_name):
            for part_dir in frozen_part_dirs(shadow_dir):
                info = known.get(part_dir.name)
                parsed = PartName.parse(part_dir.name)
                partition_id = info.partition_id if info else parsed.partition_id if parsed else ""
                value = info.partition if info else partition_id
                if partition_selected(
                    table.database,
                    table.name,
                    partition_id,
                    value,
                    self.options.partitions,
                    unnamed_whole=True,
                ):
                    selected.append((disk.name, part_dir))
                self._specs_used.update(
                    spec
                    for spec in self.options.partitions
                    if spec_selects(spec, table.database, table.name, partition_id, value)
                )
        return selected

    @staticmethod
    def _describe_part(
        table: TableInfo, disk: str, part_dir: Path, files: list[mf.PartFile], info: PartInfo | None
    ) -> mf.Part:
        rows = read_count(part_dir)
        if info is not None:
            partition, low, high, level, mutation = (
                info.partition_id,
                info.min_block,
                info.max_block,
                info.level,
                info.data_version,
            )
        else:
            parsed = PartName.parse(part_dir.name)
            if parsed is None:
                raise UnsupportedTable(
                    table=table.qualified, reason=f"cannot interpret part name {part_dir.name!r}"
                )
            partition, low, high, level, mutation = (
                parsed.partition_id,
                parsed.min_block,
                parsed.max_block,
                parsed.level,
                parsed.mutation,
            )
        if rows is None:
            rows = info.rows if info is not None else 0
        return mf.Part(
            name=part_dir.name,
            partition_id=partition,
            partition=info.partition if info is not None else partition,
            min_block=low,
            max_block=high,
            level=level,
            mutation=mutation,
            rows=rows,
            bytes=sum(f.size for f in files),
            disk=disk,
            files=files,
        )
