"""Repository and host maintenance: init, clean, catalog rebuild/sync, default-config.

``casbackup.clean`` (which loads the restore service) and ``casbackup.gc``
are imported when ``clean`` runs, not with the command line (see
``cli/main.py``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Annotated

import typer

from casbackup.catalog import Catalog
from casbackup.catalog.rebuild import rebuild, sync
from casbackup.cli.backups import JsonOption
from casbackup.cli.context import AppContext
from casbackup.cli.lifecycle import duration_seconds_cli
from casbackup.cli.output import emit_json, human_bytes, note, warn
from casbackup.config import duration_seconds, render_default_config
from casbackup.errors import (
    CasbackupError,
    CatalogMismatch,
    CatalogTaken,
    ClickHouseError,
    ExitCode,
    RepositoryError,
)
from casbackup.lifecycle import abandoned_runs, forget_abandoned
from casbackup.repo.locks import Lock
from casbackup.repo.repository import Repository

log = logging.getLogger(__name__)


def init(
    ctx: typer.Context,
    recover: Annotated[
        bool,
        typer.Option(
            "--recover",
            help="Write back a lost config object, with the repository id its manifests record.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a repository (and its catalog) at the configured location."""
    app: AppContext = ctx.obj
    new_config = Repository.recovered_config if recover else Repository.new_config
    config = new_config(app.store)
    # The catalog first: a bad URL or one that indexes another repository is
    # refused before the store holds a config, so a failed init writes no
    # repository; and if writing the config fails, the catalog is let go.
    url = app.settings.catalog_url(config.id)
    try:
        catalog = Catalog.open(url, config.id)
    except CatalogMismatch as exc:
        if recover:
            raise
        raise CatalogTaken(
            location=exc.fields["location"], catalog_repo=exc.fields["catalog_repo"]
        ) from None
    try:
        repo = Repository.create(app.store, config)
    except BaseException:
        with contextlib.suppress(CasbackupError):  # the store's error is the one to report
            catalog.abandon()
        raise
    catalog.close()
    if json_output:
        emit_json({"repository": app.store.describe(), "id": repo.id, "catalog": url})
    elif recover:
        print(f"recovered the config of repository {repo.id} at {app.store.describe()}")
    else:
        print(f"created repository {repo.id} at {app.store.describe()}")


def clean(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be removed.")
    ] = False,
    broken: Annotated[
        bool,
        typer.Option(
            "--broken", help="Also remove catalog rows and packs of backups that never committed."
        ),
    ] = False,
    margin: Annotated[
        str, typer.Option("--margin", help="With --broken: leave runs younger than this alone.")
    ] = "1h",
    json_output: JsonOption = False,
) -> int:
    """Remove shadows, temporary parts and store temporaries left by killed runs."""
    from casbackup.clean import (
        STORE_TEMP_MIN_AGE_S,
        CleanReport,
        clean_catalog,
        clean_clickhouse,
        clean_store,
    )

    app: AppContext = ctx.obj
    margin_s = duration_seconds_cli(margin)  # a typo must stop clean before it removes anything
    report = CleanReport()
    status = ExitCode.OK
    looked_at_clickhouse = False
    try:
        clean_clickhouse(app.server, report, dry_run=dry_run)
        looked_at_clickhouse = True
    except ClickHouseError as exc:
        warn(f"skipped ClickHouse cleanup: {exc.message}")
        status = ExitCode.WARNING
    temp_age = min(STORE_TEMP_MIN_AGE_S, margin_s) if broken else STORE_TEMP_MIN_AGE_S
    clean_store(app.store, report, dry_run=dry_run, min_age=temp_age)
    for warning in report.warnings:
        warn(warning)
        status = ExitCode.WARNING
    try:
        catalog_url: str | None = app.settings.catalog_url(app.repository.id)
    except RepositoryError:
        catalog_url = None  # no repository here, so no catalog of it either
    if catalog_url is not None:
        clean_catalog(catalog_url, report, dry_run=dry_run)
    broken_document: dict[str, object] | None = None
    broken_lines: list[str] = []
    if broken:
        broken_document, broken_lines, broken_warnings = _clean_broken(app, margin_s, dry_run)
        for warning in broken_warnings:  # on stderr, beside --json too
            warn(warning)
            status = ExitCode.WARNING
    if json_output:
        emit_json(
            {
                "dry_run": dry_run,
                "shadows": report.shadows,
                "temp_parts": report.temp_parts,
                "scratch_databases": report.scratch_databases,
                "store_temporaries": report.store_temporaries,
                "stale_locks": report.stale_locks,
                "catalog_temporaries": report.catalog_temporaries,
                "merges_resumed": report.merges_resumed,
                "partial_restores": report.partial_restores,
                "in_use": report.skipped_live,
                "broken": broken_document,
            }
        )
        return status
    verb = "would remove" if dry_run else "removed"
    for path in report.shadows:
        print(f"{verb} shadow {path}")
    for path in report.temp_parts:
        print(f"{verb} temporary part {path}")
    for database in report.scratch_databases:
        print(f"{verb} scratch database {database}")
    if report.store_temporaries:
        print(f"{verb} {report.store_temporaries} temporary files in the store")
    for key in report.stale_locks:
        print(f"{verb} lock {key} (its process is gone)")
    for table in report.merges_resumed:
        print(
            f"{'would resume' if dry_run else 'resumed'} merges of {table} (a killed restore paused them)"
        )
    for path in report.catalog_temporaries:
        print(f"{verb} {path} (a catalog rebuild that was killed)")
    for line in broken_lines:  # on stdout with the rest of the report
        print(line)
    for path in report.skipped_live:
        note(f"left alone (its run is still going): {path}")
    if not (
        report.shadows
        or report.temp_parts
        or report.scratch_databases
        or report.store_temporaries
        or report.stale_locks
        or report.catalog_temporaries
        or report.merges_resumed
        or report.partial_restores
        or (  # --broken says what it did in its own lines
            broken_document is not None
            and any(
                broken_document[k]
                for k in ("abandoned_backups", "packs_deleted", "packs_condemned")
            )
        )
    ):
        # Not "nothing to clean" when the server could not be asked (warned above).
        print("nothing to clean" if looked_at_clickhouse else "nothing to clean in the store")
    return status


def _clean_broken(
    app: AppContext, margin: float, dry_run: bool
) -> tuple[dict[str, object], list[str], list[str]]:
    """Abandoned running backups (process gone, older than margin) and the packs only they wrote.

    Also gc's warnings (packs its sync left out, packs not repacked), which
    the caller shows and counts in its exit code.
    """
    from casbackup.gc import collect_garbage
    from casbackup.nightly import gc_settings

    repo, catalog = app.repository, app.catalog
    runs = abandoned_runs(
        repo, catalog, margin=margin, ttl=duration_seconds(app.settings.gc.lease_ttl)
    )
    if not dry_run:
        forget_abandoned(catalog, runs)
    settings = replace(
        gc_settings(app.settings, app.settings.repository.pack_size_mb * 1024 * 1024),
        min_age=margin,
        only_dead_runs=True,
    )
    with Lock(repo.store, "gc", exclusive=True, command="clean --broken") as lock:
        report = collect_garbage(repo, catalog, settings, run_id=lock.id, dry_run=dry_run)
    verb = "would forget" if dry_run else "forgot"
    lines = [
        f"{verb} abandoned backup {run.name} (started {run.started_at:%Y-%m-%d %H:%M:%S} UTC)"
        for run in runs
    ]
    lines.append(
        f"broken packs: deleted {report.packs_deleted} ({human_bytes(report.bytes_freed)}), "
        f"condemned {len(report.plan.condemn)} (deleted by a later gc or clean --broken)"
    )
    document: dict[str, object] = {
        "abandoned_backups": [r.name for r in runs],
        "packs_deleted": report.packs_deleted,
        "bytes_freed": report.bytes_freed,
        "packs_condemned": len(report.plan.condemn),
        "warnings": report.warnings,
    }
    return document, lines, report.warnings


catalog_app = typer.Typer(
    help="The catalog: an index of the repository, rebuildable from it.", no_args_is_help=True
)


@catalog_app.command("rebuild")
def catalog_rebuild(ctx: typer.Context, json_output: JsonOption = False) -> int:
    """Rebuild the catalog from the store alone (packs and manifests).

    Damaged packs and backups are left out and named (exit 1); the rest is indexed.
    """
    app: AppContext = ctx.obj
    repo = app.repository
    url = app.settings.catalog_url(repo.id)
    report = rebuild(repo, url, progress=None if app.quiet else note)
    if json_output:
        emit_json(
            {
                "packs": report.packs_indexed,
                "backups": report.backups_imported,
                "warnings": report.warnings,
            }
        )
    else:
        print(f"rebuilt catalog: {report.packs_indexed} packs, {report.backups_imported} backups")
    for warning in report.warnings:  # on stderr, beside --json too
        warn(warning)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


@catalog_app.command("sync")
def catalog_sync(ctx: typer.Context, json_output: JsonOption = False) -> int:
    """Index packs and backups the catalog lacks; forget backups deleted elsewhere.

    Damaged packs and backups are left out and named (exit 1).
    """
    app: AppContext = ctx.obj
    report = sync(app.repository, app.catalog)
    if json_output:
        emit_json(vars(report))
    else:
        print(
            f"indexed {report.packs_indexed} packs, imported {report.backups_imported} backups, "
            f"forgot {report.backups_forgotten} backups"
        )
    for warning in report.warnings:  # on stderr, beside --json too
        warn(warning)
    return ExitCode.WARNING if report.warnings else ExitCode.OK


def default_config() -> None:
    """Print a commented configuration file with the defaults."""
    print(render_default_config(), end="")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(clean)
    app.add_typer(catalog_app, name="catalog")
    app.command(name="default-config")(default_config)
