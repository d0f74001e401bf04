"""What a command needs, opened on first use and closed once at the end."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from casbackup.catalog import Catalog
from casbackup.catalog.backups import out_of_step
from casbackup.catalog.rebuild import sync
from casbackup.cli.output import warn
from casbackup.clickhouse.client import connect, parse_url
from casbackup.clickhouse.server import ClickHouseServer
from casbackup.config import Settings, load_settings
from casbackup.errors import (
    CatalogMismatch,
    ClickHouseAuthFailed,
    ClickHouseError,
    ClickHouseUnavailable,
    ConfigError,
)
from casbackup.repo.repository import Repository
from casbackup.store import ObjectStore, open_store


@dataclass
class AppContext:
    config_path: Path | None = None
    repo_override: str | None = None
    clickhouse_override: str | None = None
    json_output: bool = False
    quiet: bool = False
    _settings: Settings | None = None
    _store: ObjectStore | None = None
    _repository: Repository | None = None
    _catalog: Catalog | None = None
    _server: ClickHouseServer | None = None
    _closers: list[object] = field(default_factory=list)
    # Warnings already shown on the way to the command's own work (backups or
    # packs a sync left out): a command that succeeds after one exits 1.
    warnings: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                self.config_path,
                overrides={
                    ("repository", "location"): self.repo_override,
                    ("clickhouse", "url"): self.clickhouse_override,
                },
            )
        return self._settings

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(
                self.settings.repository.location,
                s3=self.settings.s3,
                server_macros=self._server_macros,
            )
        return self._store

    def _server_macros(self) -> Mapping[str, str]:
        """ClickHouse's system.macros, asked only for a location macro the config lacks."""
        try:
            return self.server.macros()
        except (ClickHouseUnavailable, ClickHouseAuthFailed):
            raise  # the server's state, not the config's (exit 11)
        except ClickHouseError as exc:
            raise ConfigError(
                detail=f"repository location {self.settings.repository.location!r} uses macros "
                f"that [s3] macros does not define, and reading system.macros failed: {exc.message}"
            ) from None

    @property
    def repository(self) -> Repository:
        if self._repository is None:
            self._repository = Repository.open(self.store)
        return self._repository

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            repo = self.repository
            try:
                self._catalog = Catalog.open(self.settings.catalog_url(repo.id), repo.id)
            except CatalogMismatch as exc:
                repo.refuse_changed_config(exc.fields["catalog_repo"])
                raise
        return self._catalog

    def synced_catalog(self) -> Catalog:
        """The catalog, first brought in line with the store if their backup lists differ.

        One LIST of manifests; a full sync only when another host (or a crash
        between commit and catalog update) left them out of step.
        """
        catalog = self.catalog
        indexed = catalog.backups.committed_stamps()  # the catalog first: see catalog.rebuild.sync
        if out_of_step(indexed, self.repository.list_backups()):
            for warning in sync(self.repository, catalog).warnings:
                warn(warning)
                self.warnings.append(warning)
        return catalog

    @property
    def server(self) -> ClickHouseServer:
        if self._server is None:
            spec = parse_url(self.settings.clickhouse.url)
            password = self.settings.clickhouse.password
            spec = spec.with_password(password.get_secret_value() if password else None)
            self._server = ClickHouseServer(connect(spec))
        return self._server

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        if self._server is not None:
            self._server.close()
        close_store = getattr(self._store, "close", None)  # S3: the transfer manager's threads
        if close_store is not None:
            close_store()
