"""Repository and host maintenance: init, clean, catalog rebuild/sync, default-config."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from casbackup.catalog import Catalog
from casbackup.catalog.rebuild import rebuild, sync
from casbackup.clean import CleanReport, clean_clickhouse, clean_store
from casbackup.cli.backups import JsonOption
from casbackup.cli.context import AppContext
from casbackup.cli.output import emit_json, note
from casbackup.config import render_default_config
from casbackup.errors import ClickHouseError, ExitCode
from casbackup.repo.repository import Repository

log = logging.getLogger(__name__)


def init(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Create a repository (and its catalog) at the configured location."""
    app: AppContext = ctx.obj
    repo = Repository.init(app.store)
    url = app.settings.catalog_url(repo.id)
    Catalog.open(url, repo.id).close()
    if json_output:
        emit_json(
            {
                "repository": app.store.describe(),
                "id": repo.id,
                "catalog": app.settings.catalog_url(repo.id),
            }
        )
    else:
        print(f"created repository {repo.id} at {app.store.describe()}")


def clean(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be removed.")
    ] = False,
    json_output: JsonOption = False,
) -> int:
    """Remove shadows, temporary parts and store temporaries left by killed runs."""
    app: AppContext = ctx.obj
    report = CleanReport()
    status = ExitCode.OK
    try:
        clean_clickhouse(app.server, report, dry_run=dry_run)
    except ClickHouseError as exc:
        note(f"warning: skipped ClickHouse cleanup: {exc.message}")
        status = ExitCode.WARNING
    clean_store(app.store, report, dry_run=dry_run)
    if json_output:
        emit_json(
            {
                "dry_run": dry_run,
                "shadows": report.shadows,
                "temp_parts": report.temp_parts,
                "store_temporaries": report.store_temporaries,
                "in_use": report.skipped_live,
            }
        )
        return status
    verb = "would remove" if dry_run else "removed"
    for path in report.shadows:
        print(f"{verb} shadow {path}")
    for path in report.temp_parts:
        print(f"{verb} temporary part {path}")
    if report.store_temporaries:
        print(f"{verb} {report.store_temporaries} temporary files in the store")
    for path in report.skipped_live:
        note(f"left alone (its run is still going): {path}")
    if not (report.shadows or report.temp_parts or report.store_temporaries):
        print("nothing to clean")
    return status


catalog_app = typer.Typer(
    help="The catalog: an index of the repository, rebuildable from it.", no_args_is_help=True
)


@catalog_app.command("rebuild")
def catalog_rebuild(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Rebuild the catalog from the store alone (packs and manifests)."""
    app: AppContext = ctx.obj
    repo = app.repository
    url = app.settings.catalog_url(repo.id)
    report = rebuild(repo, url, progress=None if app.quiet else note)
    if json_output:
        emit_json({"packs": report.packs_indexed, "backups": report.backups_imported})
    else:
        print(f"rebuilt catalog: {report.packs_indexed} packs, {report.backups_imported} backups")


@catalog_app.command("sync")
def catalog_sync(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Index packs and backups the catalog lacks; forget backups deleted elsewhere."""
    app: AppContext = ctx.obj
    report = sync(app.repository, app.catalog)
    if json_output:
        emit_json(vars(report))
    else:
        print(
            f"indexed {report.packs_indexed} packs, imported {report.backups_imported} backups, "
            f"forgot {report.backups_forgotten} backups"
        )


def default_config() -> None:
    """Print a commented configuration file with the defaults."""
    print(render_default_config(), end="")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(clean)
    app.add_typer(catalog_app, name="catalog")
    app.command(name="default-config")(default_config)
