"""The restore command."""

from __future__ import annotations

from typing import Annotated

import typer

from casbackup.cli.backups import ExcludeOption, JsonOption, TablesOption, patterns
from casbackup.cli.context import AppContext
from casbackup.cli.output import ByteProgress, emit_json, print_table
from casbackup.errors import UsageError
from casbackup.restore import RestoreOptions, RestoreProgress, RestoreService


def parse_mapping(values: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for value in values or []:
        source, sep, target = value.partition(":")
        if not sep or not source or not target:
            raise UsageError(detail=f"--as expects SOURCE_DB:TARGET_DB, got {value!r}")
        if source in mapping and mapping[source] != target:
            raise UsageError(detail=f"--as maps {source!r} twice")
        mapping[source] = target
    return mapping


class _RestoreBar(RestoreProgress):
    def __init__(self, bar: ByteProgress) -> None:
        self.bar = bar

    def start(self, total_bytes: int) -> None:
        self.bar.set_total(total_bytes)

    def table(self, target: str) -> None:
        self.bar.describe(target)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(nbytes)


def restore(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Backup to restore.")],
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    as_: Annotated[
        list[str] | None,
        typer.Option("--as", help="Restore database SRC into DST (SRC:DST, repeatable)."),
    ] = None,
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="Create databases and tables, no data.")
    ] = False,
    data_only: Annotated[
        bool, typer.Option("--data-only", help="Attach data into existing tables.")
    ] = False,
    drop_existing: Annotated[
        bool,
        typer.Option(
            "--drop-existing", help="Replace existing targets (drop, or truncate with --data-only)."
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Restore tables (schema and data) from a backup."""
    if schema_only and data_only:
        raise UsageError(detail="--schema-only and --data-only exclude each other")
    app: AppContext = ctx.obj
    options = RestoreOptions(
        tables=patterns(tables, ["*.*"]),
        exclude=patterns(exclude, []),
        database_map=parse_mapping(as_),
        schema_only=schema_only,
        data_only=data_only,
        drop_existing=drop_existing,
        threads=max(2, app.settings.repository.threads * 2),
    )
    manifest = app.repository.read_manifest(name)
    catalog = app.synced_catalog()
    bar = ByteProgress(enabled=not (json_output or app.quiet))
    with bar.running("restoring"):
        report = RestoreService(
            app.server, app.repository, catalog, manifest, options, _RestoreBar(bar)
        ).run()
    if json_output:
        emit_json(
            {
                "backup": report.backup,
                "tables": [
                    {
                        "source": t.source,
                        "target": t.target,
                        "engine": t.engine,
                        "created": t.created,
                        "parts": t.parts,
                        "rows": t.rows,
                    }
                    for t in report.tables
                ],
            }
        )
        return
    print_table(
        ["source", "target", "engine", "created", "parts", "rows"],
        [
            [t.source, t.target, t.engine, "yes" if t.created else "", t.parts, f"{t.rows:,}"]
            for t in report.tables
        ],
        right=["parts", "rows"],
    )


def register(app: typer.Typer) -> None:
    app.command()(restore)
