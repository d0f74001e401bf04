"""Commands about backups: create, list, show, tables."""

from __future__ import annotations

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
from casbackup.cli.output import ByteProgress, emit_json, human_bytes, note, print_table, ratio
from casbackup.clickhouse.server import TableInfo
from casbackup.errors import ExitCode

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


def patterns(values: list[str] | None, default: list[str]) -> tuple[str, ...]:
    if not values:
        return tuple(default)
    return tuple(p.strip() for value in values for p in value.split(",") if p.strip())


class _BackupBar(BackupProgress):
    def __init__(self, bar: ByteProgress) -> None:
        self.bar = bar

    def table(self, table: TableInfo) -> None:
        self.bar.describe(table.qualified)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(nbytes)


def create(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="Backup name (default: the UTC time, e.g. 2026-11-23T020000Z)."),
    ] = None,
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    rehash: Annotated[
        bool, typer.Option("--rehash", help="Read and hash every file, even ones known unchanged.")
    ] = False,
    json_output: JsonOption = False,
) -> int:
    """Back up tables: FREEZE, store new content, commit a manifest."""
    app: AppContext = ctx.obj
    settings = app.settings
    options = BackupOptions(
        name=name,
        tables=patterns(tables, settings.backup.tables),
        exclude=patterns(exclude, settings.backup.exclude),
        compression_level=settings.repository.compression_level,
        pack_size=settings.repository.pack_size_mb * 1024 * 1024,
        threads=settings.repository.threads,
        upload_threads=settings.upload_threads,
        rehash=rehash,
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
        "warnings": report.warnings,
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
        note(f"warning: {warning}")


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
        f"backup {m.name}  {m.started_at:%Y-%m-%d %H:%M:%S} UTC  host {m.hostname}  ClickHouse {m.clickhouse_version}"
    )
    print_table(
        ["table", "engine", "parts", "rows", "bytes"],
        [
            [f"{t.database}.{t.name}", t.engine, len(t.parts), f"{t.rows:,}", human_bytes(t.bytes)]
            for t in m.tables
        ],
        right=["parts", "rows", "bytes"],
    )
    if parts:
        for t in m.tables:
            for p in t.parts:
                print(
                    f"  {t.database}.{t.name}  {p.name}  {p.rows:,} rows  {human_bytes(p.bytes)}  {len(p.files)} files"
                )


def tables(
    ctx: typer.Context,
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the tables `create` would back up, in the order it would."""
    app: AppContext = ctx.obj
    settings = app.settings
    planned = plan_backup(
        app.server,
        patterns(tables, settings.backup.tables),
        patterns(exclude, settings.backup.exclude),
    )
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
        return
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
