"""The restore command.

``casbackup.restore`` is imported when the command runs, not with the
command line: every other command (a nightly ``create`` most of all) would
pay for loading it at start-up (see ``cli/main.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from casbackup.cli.backups import (
    ExcludeOption,
    JsonOption,
    PartitionsOption,
    TablesOption,
    partition_specs,
    patterns,
)
from casbackup.cli.context import AppContext
from casbackup.cli.output import ByteProgress, emit_json, note, print_table, warn
from casbackup.config import default_state_dir
from casbackup.errors import ExitCode, UsageError
from casbackup.server_state import ON_EXISTING

if TYPE_CHECKING:
    from casbackup.restore import RestoreProgress, RestoreReport


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


def _restore_bar(bar: ByteProgress) -> RestoreProgress:
    """The progress bar as the restore reports to it (the class is built with the import)."""
    from casbackup.restore import RestoreProgress

    class RestoreBar(RestoreProgress):
        def start(self, total_bytes: int) -> None:
            bar.set_total(total_bytes)

        def table(self, target: str) -> None:
            bar.describe(target)

        def advance(self, nbytes: int) -> None:
            bar.advance(nbytes)

    return RestoreBar()


def restore(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Backup to restore.")],
    tables: TablesOption = None,
    exclude: ExcludeOption = None,
    as_: Annotated[
        list[str] | None,
        typer.Option("--as", help="Restore database SRC into DST (SRC:DST, repeatable)."),
    ] = None,
    partitions: PartitionsOption = None,
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="Create databases and tables, no data.")
    ] = False,
    data_only: Annotated[
        bool, typer.Option("--data-only", help="Attach data into existing tables.")
    ] = False,
    no_tables: Annotated[
        bool,
        typer.Option("--no-tables", help="No tables: only what --rbac and --configs ask for."),
    ] = False,
    drop_existing: Annotated[
        bool,
        typer.Option(
            "--drop-existing",
            help="Replace existing targets (drop; truncate with --data-only; "
            "only the chosen partitions with --partitions).",
        ),
    ] = False,
    ignore_dependencies: Annotated[
        bool,
        typer.Option(
            "--ignore-dependencies",
            help="Create what can be created; report objects whose dependencies are missing.",
        ),
    ] = False,
    functions: Annotated[
        bool,
        typer.Option(
            "--functions/--no-functions", help="SQL functions and named collections in the backup."
        ),
    ] = True,
    rbac: Annotated[
        bool,
        typer.Option("--rbac", help="Recreate access entities; access files go to --files-target."),
    ] = False,
    on_existing: Annotated[
        str,
        typer.Option(
            "--on-existing",
            help="Access entities, functions, named collections that exist: skip, replace or fail.",
        ),
    ] = "skip",
    configs: Annotated[
        bool, typer.Option("--configs", help="Write the backed-up config files to --files-target.")
    ] = False,
    files_target: Annotated[
        Path | None,
        typer.Option(
            "--files-target",
            help="Directory whose configs/ and access/ subdirectories receive the files "
            "(default: a staging directory under the state directory).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files that exist under --files-target.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check every part's files against its checksums.txt before attaching any "
            "(about 1 s per GB more).",
        ),
    ] = False,
    allow_type_change: Annotated[
        bool,
        typer.Option(
            "--allow-type-change",
            help="Attach parts into an existing table whose column types differ from theirs "
            "all the same: 26.x converts them as after MODIFY COLUMN; 18.16 reads their bytes "
            "as the table's type (garbage).",
        ),
    ] = False,
    allow_older_server: Annotated[
        bool,
        typer.Option(
            "--allow-older-server",
            help="Restore tables of a backup made on a newer ClickHouse release all the same "
            "(after rolling an upgrade back); ClickHouse refuses what it cannot read.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> int:
    """Restore tables (schema and data) from a backup; with --rbac/--configs, server state too."""
    if schema_only and data_only:
        raise UsageError(detail="--schema-only and --data-only exclude each other")
    if on_existing not in ON_EXISTING:
        raise UsageError(detail=f"--on-existing must be one of {', '.join(ON_EXISTING)}")
    if no_tables and not (rbac or configs):
        raise UsageError(detail="--no-tables leaves nothing to restore without --rbac or --configs")
    from casbackup.restore import RestoreOptions, RestoreService

    app: AppContext = ctx.obj
    options = RestoreOptions(
        tables=patterns(tables, ["*.*"]),
        exclude=patterns(exclude, []),
        database_map=parse_mapping(as_),
        schema_only=schema_only,
        data_only=data_only,
        drop_existing=drop_existing,
        threads=max(2, app.settings.repository.threads * 2),
        restore_tables=not no_tables,
        partitions=partition_specs(partitions),
        ignore_dependencies=ignore_dependencies,
        functions=functions and not no_tables,
        access=rbac,
        on_existing=on_existing,
        configs=configs,
        files_target=files_target or default_state_dir() / "restored" / name,
        overwrite_files=overwrite,
        check_parts=check,
        follow_repacks=True,
        allow_older_server=allow_older_server,
        check_column_types=not allow_type_change,
    )
    manifest = app.repository.read_manifest(name)
    catalog = app.synced_catalog()
    bar = ByteProgress(enabled=not (json_output or app.quiet))
    service = RestoreService(
        app.server, app.repository, catalog, manifest, options, _restore_bar(bar)
    )
    with bar.running("restoring"):
        report = service.run()
    if unchecked := sum(service.checked.values()):
        report.notes.append(
            f"{unchecked} parts have no checksums.txt (formats before 2016) and were not checked"
        )
    if json_output:
        emit_json(_report_document(report, service.checked if check else None))
    elif report.tables:
        print_table(
            ["source", "target", "engine", "created", "parts", "rows"],
            [
                [t.source, t.target, t.engine, "yes" if t.created else "", t.parts, f"{t.rows:,}"]
                for t in report.tables
            ],
            right=["parts", "rows"],
        )
    if not json_output and (report.objects or report.skipped_objects):
        print(
            f"server objects: {len(report.objects)} created, "
            f"{len(report.skipped_objects)} skipped (exist already)"
        )
    for line in report.notes:
        note(line)
    for warning in report.warnings:
        warn(warning)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


def _report_document(report: RestoreReport, checked: dict[str, int] | None) -> dict[str, object]:
    return {
        "backup": report.backup,
        "tables": [
            {
                "source": t.source,
                "target": t.target,
                "engine": t.engine,
                "created": t.created,
                "parts": t.parts,
                "rows": t.rows,
                **({} if checked is None else {"unchecked_parts": checked.get(t.target, 0)}),
            }
            for t in report.tables
        ],
        "objects": report.objects,
        "skipped_objects": report.skipped_objects,
        "files": [str(path) for path in report.files],
        "warnings": report.warnings,
        "notes": report.notes,
    }


def register(app: typer.Typer) -> None:
    app.command()(restore)
