"""The verify command.

``casbackup.verify`` is imported when a command verifies, not with the
command line (see ``cli/main.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from casbackup.cli.backups import JsonOption, TablesOption, nonempty_name, patterns
from casbackup.cli.context import AppContext
from casbackup.cli.output import emit_json, human_bytes, note, print_table, warn
from casbackup.errors import ExitCode, UsageError, VerifyFailed

if TYPE_CHECKING:
    from casbackup.verify import VerifyReport


def report_document(report: VerifyReport) -> dict[str, object]:
    return {
        "ok": report.ok,
        "backups": report.backups,
        "files": report.files,
        "chunks": report.chunks,
        "packs": report.packs,
        "packs_read": report.packs_read,
        "bytes_read": report.bytes_read,
        "chunks_verified": report.chunks_verified,
        "subset": report.subset,
        "tables": [vars(t) for t in report.tables],
        "problems": [
            {"level": p.level, "object": p.object, "detail": p.detail} for p in report.problems
        ],
        "skipped": report.skipped,
    }


def raise_if_failed(report: VerifyReport) -> None:
    if not report.ok:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise VerifyFailed(detail=f"{first}{more}")


def verify(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Backup to verify (default: all).")] = None,
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Download packs and check every chunk.")
    ] = False,
    subset: Annotated[
        str | None,
        typer.Option(
            "--subset",
            help="With --read-data: 5% (window moving daily), 1/7 (a group), or a size (2G).",
        ),
    ] = None,
    restore: Annotated[
        bool,
        typer.Option(
            "--restore",
            help="Test-restore into scratch databases; check every file against ClickHouse's "
            "checksums, and rows.",
        ),
    ] = False,
    tables: TablesOption = None,
    json_output: JsonOption = False,
) -> int:
    """Check that backups restore: structure, optionally data, optionally a real test restore."""
    from casbackup.verify import Verifier, VerifyOptions

    app: AppContext = ctx.obj
    if tables and not restore:
        raise UsageError(detail="--tables chooses what --restore restores; it needs --restore")
    if subset and not read_data:
        read_data = True
    options = VerifyOptions(
        names=() if name is None else (nonempty_name(name),),
        read_data=read_data,
        subset=subset,
        restore=restore,
        tables=patterns(tables, ["*.*"]),
        threads=max(2, app.settings.repository.threads * 2),
    )
    server = app.server if restore else None
    report = Verifier(
        app.repository,
        app.catalog,
        options,
        server,
        progress=None if app.quiet or json_output else note,
    ).run()
    if json_output:
        emit_json(report_document(report))
    else:
        print(
            f"structure: {len(report.backups)} backups, {report.files} files, {report.chunks} chunks "
            f"in {report.packs} packs"
        )
        if read_data:
            print(
                f"data: read {report.packs_read} packs ({human_bytes(report.bytes_read)}, {report.subset}), "
                f"{report.chunks_verified} chunks verified"
            )
        if report.tables:
            print_table(
                ["backup", "table", "rows", "checksums", "fingerprint", "CHECK TABLE", "result"],
                [
                    [
                        t.backup,
                        t.table,
                        "" if t.rows_found is None else f"{t.rows_found:,}",
                        t.checksums,
                        t.fingerprint,
                        t.check_table,
                        "ok" if t.ok else "FAILED",
                    ]
                    for t in report.tables
                ],
            )
        for problem in report.problems:
            note(f"problem: {problem}")
        for skipped in report.skipped:
            warn(skipped)
        if report.ok:
            print("verify OK" + (" (with warnings)" if report.skipped else ""))
    raise_if_failed(report)
    return ExitCode.WARNING if report.skipped else ExitCode.OK


def register(app: typer.Typer) -> None:
    app.command()(verify)
