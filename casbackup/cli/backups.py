"""Commands about backups: create, list, show, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from casbackup.backup import (
    BackupOptions,
    BackupProgress,
    BackupReport,
    BackupService,
    TableReport,
    plan_backup,
)
from casbackup.cli.context import AppContext
from casbackup.cli.output import (
    ByteProgress,
    emit_json,
    human_bytes,
    note,
    one_line,
    print_table,
    ratio,
    warn,
)
from casbackup.clickhouse.server import TableInfo
from casbackup.config import Settings
from casbackup.errors import ExitCode, UsageError
from casbackup.repo.manifest import FileSet
from casbackup.selection import split_specs
from casbackup.server_state import redact

TablesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--tables", "-t", help="database.table glob patterns (repeatable or comma-separated)."
    ),
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option("--exclude", "-x", help="Patterns to leave out (repeatable or comma-separated)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of text.")
]


def nonempty_name(name: str) -> str:
    """A backup name given on the command line; an empty one is a mistake, not "the default".

    ``casbackup verify "$(casbackup list --json | ...)" --restore`` on an
    empty repository passed an empty name, which read as "every backup" (of
    which there were none) and said "verify OK".
    """
    if not name:
        raise UsageError(detail="the backup name is empty")
    return name


def partition_specs(values: list[str] | None) -> tuple[str, ...]:
    """``--partitions`` specs; given but naming none (``--partitions "$P"`` with P unset) is a mistake.

    It read as "every partition": ``restore --drop-existing --partitions ''``
    replaced whole tables where the operator meant some partitions of them.
    """
    specs = split_specs(values or [])
    if values and not specs:
        raise UsageError(
            detail="--partitions names no partition (an empty value?); leave it out to take "
            "every partition"
        )
    return specs


def patterns(values: list[str] | None, default: list[str]) -> tuple[str, ...]:
    """Command-line patterns; one that can match no ``db.table`` name is a mistake, not a no-op.

    ``--exclude shop`` would exclude nothing and ``--tables shop`` choose
    nothing, silently or as "no tables match": every name has a dot. A glob
    without one (``*``, ``shop*``) still matches and is kept.
    """
    if not values:
        return tuple(default)
    chosen = tuple(p.strip() for value in values for p in value.split(",") if p.strip())
    for pattern in chosen:
        if "." not in pattern and not any(c in pattern for c in "*?["):
            raise UsageError(
                detail=f"pattern {pattern!r} names no table: patterns look like database.table "
                f"(globs allowed), e.g. {pattern}.*"
            )
    return chosen


class _BackupBar(BackupProgress):
    def __init__(self, bar: ByteProgress) -> None:
        self.bar = bar

    def table(self, table: TableInfo) -> None:
        self.bar.describe(table.qualified)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(nbytes)


def backup_options(
    settings: Settings,
    *,
    name: str | None = None,
    tables: list[str] | None = None,
    exclude: list[str] | None = None,
    rehash: bool = False,
    partitions: list[str] | None = None,
    rbac: bool = False,
    configs: bool = False,
    configs_path: Path | None = None,
    access_path: Path | None = None,
) -> BackupOptions:
    """A backup's options: the command line where given, else the config."""
    wanted = settings.backup
    return BackupOptions(
        name=name,
        tables=patterns(tables, wanted.tables),
        exclude=patterns(exclude, wanted.exclude),
        schema_only=tuple(wanted.schema_only),
        compression_level=settings.repository.compression_level,
        pack_size=settings.repository.pack_size_mb * 1024 * 1024,
        threads=settings.repository.threads,
        upload_threads=settings.upload_threads,
        rehash=rehash,
        partitions=partition_specs(partitions),
        access=rbac or wanted.rbac,
        access_path=access_path or wanted.access_path,
        configs=(configs_path or wanted.configs_path) if configs or wanted.configs else None,
        fingerprints=wanted.fingerprints,
    )


PartitionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--partitions",
        help="Only these partitions, by id or value (P or db.table:P; repeatable or comma-separated).",
    ),
]


def create(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="Backup name (default: the UTC time, e.g. 2026-11-23T020000Z)."),
    ] = None,
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    partitions: PartitionsOption = None,
    rbac: Annotated[
        bool,
        typer.Option(
            "--rbac", help="Also users, roles, quotas, row policies, profiles and grants."
        ),
    ] = False,
    configs: Annotated[
        bool, typer.Option("--configs", help="Also the server's config directory.")
    ] = False,
    configs_path: Annotated[
        Path | None,
        typer.Option(
            "--configs-path",
            help="Config directory (default: [backup] configs_path, /etc/clickhouse-server).",
        ),
    ] = None,
    access_path: Annotated[
        Path | None,
        typer.Option(
            "--access-path", help="Access directory, if system.user_directories does not say."
        ),
    ] = None,
    rehash: Annotated[
        bool, typer.Option("--rehash", help="Read and hash every file, even ones known unchanged.")
    ] = False,
    json_output: JsonOption = False,
) -> int:
    """Back up tables: FREEZE, store new content, commit a manifest."""
    app: AppContext = ctx.obj
    options = backup_options(
        app.settings,
        name=None if name is None else nonempty_name(name),
        tables=tables,
        exclude=exclude,
        rehash=rehash,
        partitions=partitions,
        rbac=rbac,
        configs=configs,
        configs_path=configs_path,
        access_path=access_path,
    )
    bar = ByteProgress(enabled=not (json_output or app.quiet))
    with bar.running("backing up"):
        report = BackupService(
            app.server, app.repository, app.catalog, options, _BackupBar(bar)
        ).run()
    if json_output:
        emit_json(_report_document(report))
    else:
        _print_report(report, app.quiet)
    if not app.quiet:  # --quiet: "no progress bars or notes" (warnings still)
        for line in report.notes:
            note(line)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


def _report_document(report: BackupReport) -> dict[str, object]:
    m = report.manifest
    return {
        "name": report.name,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "duration_s": m.stats.duration_ms / 1000,
        "tables": [_table_document(t) for t in report.tables],
        "rows": sum(t.rows for t in m.tables),
        "logical_bytes": m.stats.logical_bytes,
        "read_bytes": m.stats.read_bytes,
        "new_bytes": m.stats.new_bytes,
        "new_raw_bytes": m.stats.new_raw_bytes,
        "new_chunks": m.stats.new_chunks,
        "access": len(m.access),
        "functions": len(m.functions),
        "named_collections": len(m.named_collections),
        "configs": None if m.configs is None else len(m.configs.files),
        "access_files": None if m.access_files is None else len(m.access_files.files),
        "warnings": report.warnings,
        "notes": report.notes,
    }


def _table_document(t: TableReport) -> dict[str, object]:
    return {
        "table": t.table,
        "engine": t.engine,
        "parts": t.parts,
        "rows": t.rows,
        "bytes": t.bytes,
        "skipped": t.skipped,
    }


def _print_report(report: BackupReport, quiet: bool) -> None:
    m = report.manifest
    rows = sum(t.rows for t in m.tables)
    print(
        f"backup {report.name}: {len(m.tables)} tables, {rows:,} rows, {human_bytes(m.stats.logical_bytes)} "
        f"logical; read {human_bytes(m.stats.read_bytes)}, stored {human_bytes(m.stats.new_bytes)} new "
        f"in {m.stats.duration_ms / 1000:.1f} s"
    )
    for warning in report.warnings:
        warn(warning)


def list_backups(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List committed backups, oldest first."""
    app: AppContext = ctx.obj
    summaries = app.synced_catalog().backups.summaries()
    if json_output:
        emit_json(
            [
                {
                    "name": s.name,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                    "host": s.hostname,
                    "tables": s.tables,
                    "rows": s.rows,
                    "logical_bytes": s.logical_bytes,
                    "new_bytes": s.new_bytes,
                    "read_bytes": s.read_bytes,
                    "duration_s": s.duration_ms / 1000,
                    "dedupe_ratio": None
                    if not s.new_bytes
                    else round(s.logical_bytes / s.new_bytes, 2),
                }
                for s in summaries
            ]
        )
        return
    print_table(
        ["name", "time (UTC)", "tables", "rows", "logical", "new", "dedupe"],
        [
            [
                s.name,
                s.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                s.tables,
                f"{s.rows:,}",
                human_bytes(s.logical_bytes),
                human_bytes(s.new_bytes),
                ratio(s.logical_bytes, s.new_bytes),
            ]
            for s in summaries
        ],
        right=["tables", "rows", "logical", "new", "dedupe"],
    )


def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Backup name.")],
    parts: Annotated[bool, typer.Option("--parts", help="List every part.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Show a backup's tables (and parts), read from its manifest."""
    app: AppContext = ctx.obj
    m = app.repository.read_manifest(name)
    if json_output:
        emit_json(
            {
                "name": m.name,
                "started_at": m.started_at,
                "finished_at": m.finished_at,
                "host": m.hostname,
                "clickhouse_version": m.clickhouse_version,
                "stats": m.stats.model_dump(),
                "databases": [{"name": d.name, "engine": d.engine} for d in m.databases],
                "partitions": m.partitions,
                "access": [
                    {**o.model_dump(), "create_sql": redact(o.create_sql)} for o in m.access
                ],
                "functions": [o.model_dump() for o in m.functions],
                "named_collections": [{"name": o.name} for o in m.named_collections],
                "configs": _fileset_document(m.configs),
                "access_files": _fileset_document(m.access_files),
                "tables": [
                    {
                        "database": t.database,
                        "name": t.name,
                        "engine": t.engine,
                        "rows": t.rows,
                        "bytes": t.bytes,
                        "has_data": t.has_data,
                        "parts": [
                            {
                                "name": p.name,
                                "partition_id": p.partition_id,
                                "partition": p.partition,
                                "rows": p.rows,
                                "bytes": p.bytes,
                                "files": len(p.files),
                            }
                            for p in t.parts
                        ],
                    }
                    for t in m.tables
                ],
            }
        )
        return
    print(
        one_line(
            f"backup {m.name}  {m.started_at:%Y-%m-%d %H:%M:%S} UTC  host {m.hostname}  "
            f"ClickHouse {m.clickhouse_version}"
        )
    )
    print_table(
        ["table", "engine", "parts", "rows", "bytes"],
        [
            [f"{t.database}.{t.name}", t.engine, len(t.parts), f"{t.rows:,}", human_bytes(t.bytes)]
            for t in m.tables
        ],
        right=["parts", "rows", "bytes"],
    )
    extras = [
        f"{len(m.access)} access entities and grants" if m.access else "",
        f"{len(m.functions)} SQL functions" if m.functions else "",
        f"{len(m.named_collections)} named collections" if m.named_collections else "",
        f"{len(m.access_files.files)} access files" if m.access_files else "",
        f"{len(m.configs.files)} config files from {m.configs.source}" if m.configs else "",
        f"only partitions {', '.join(m.partitions)}" if m.partitions else "",
    ]
    if any(extras):
        print(one_line("also: " + "; ".join(e for e in extras if e)))
    if parts:
        for t in m.tables:
            for p in t.parts:
                print(
                    one_line(
                        f"  {t.database}.{t.name}  {p.name}  {p.rows:,} rows  "
                        f"{human_bytes(p.bytes)}  {len(p.files)} files"
                    )
                )


def _fileset_document(fileset: FileSet | None) -> dict[str, object] | None:
    if fileset is None:
        return None
    return {
        "source": fileset.source,
        "files": [{"path": f.path, "size": f.size} for f in fileset.files],
    }


def tables(
    ctx: typer.Context,
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    json_output: JsonOption = False,
) -> int:
    """List the tables `create` would back up, in the order it would."""
    app: AppContext = ctx.obj
    settings = app.settings
    plan = plan_backup(
        app.server,
        patterns(tables, settings.backup.tables),
        patterns(exclude, settings.backup.exclude),
    )
    planned = plan.tables
    sizes = {}
    for t in planned:
        if t.has_data:
            active = app.server.parts(t.database, t.name)
            sizes[t.qualified] = (
                len(active),
                sum(p.rows for p in active),
                sum(p.bytes_on_disk for p in active),
            )
    if json_output:
        emit_json(
            [
                {
                    "table": t.qualified,
                    "engine": t.engine,
                    "data": t.has_data,
                    "parts": sizes.get(t.qualified, (0, 0, 0))[0],
                    "rows": sizes.get(t.qualified, (0, 0, 0))[1],
                    "bytes": sizes.get(t.qualified, (0, 0, 0))[2],
                }
                for t in planned
            ]
        )
    else:
        _print_planned(planned, sizes)
    for warning in plan.warnings():  # on stderr, beside --json too
        warn(warning)
    return ExitCode.WARNING if plan.unmatched else ExitCode.OK


def _print_planned(planned: list[TableInfo], sizes: dict[str, tuple[int, int, int]]) -> None:
    print_table(
        ["table", "engine", "data", "parts", "rows", "bytes"],
        [
            [
                t.qualified,
                t.engine,
                "yes" if t.has_data else "schema",
                *(
                    [
                        sizes[t.qualified][0],
                        f"{sizes[t.qualified][1]:,}",
                        human_bytes(sizes[t.qualified][2]),
                    ]
                    if t.qualified in sizes
                    else ["", "", ""]
                ),
            ]
            for t in planned
        ],
        right=["parts", "rows", "bytes"],
    )


def register(app: typer.Typer) -> None:
    app.command()(create)
    app.command(name="list")(list_backups)
    app.command()(show)
    app.command()(tables)
