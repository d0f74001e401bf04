"""Catalogs on PostgreSQL: created, migrated and used against a real server.

A server of its own is started from the PostgreSQL binaries (initdb, pg_ctl:
on the PATH, or Debian's postgresql package, which tools/test.sh installs),
over a Unix socket only; without them, or without the psycopg driver, these
tests are skipped, or fail with CASBACKUP_REQUIRE_ENGINES=1 (CI).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from casbackup.catalog import Catalog
from casbackup.catalog.database import SCHEMA_HEAD, _alembic_config, make_engine
from casbackup.catalog.rebuild import rebuild
from casbackup.repo.repository import ManifestStamp, Repository
from tests.engines import require
from tests.helpers import snapshot_directory, write_tree

_databases = itertools.count()


def _server_binary(name: str) -> str | None:
    """On the PATH, or where Debian keeps them: /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found is None:
        installed = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(installed[-1]) if installed else None
    return found


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Path]:
    """The socket directory of a throw-away PostgreSQL server (it refuses to run as root:
    then it runs as nobody, in a directory of its own outside pytest's private ones)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("no psycopg (the PostgreSQL driver of the test extras)")
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        require("no PostgreSQL server installed (initdb, pg_ctl; Debian's postgresql)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="casbackup-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data = base / "data"

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True)

    run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust")
    options = f"-k {base} -c listen_addresses='' -p 5432"
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        yield base
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: Path) -> str:
    """A new, empty database on the server, for one test."""
    import psycopg

    name = f"catalog_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(
        host=str(postgres_server), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@/{name}?host={postgres_server}"


def test_a_backup_is_recorded_in_a_new_postgresql_catalog(
    repo: Repository, postgres_url: str, tmp_path: Path
) -> None:
    """Creating the schema failed at its first migration: the chunks table's CHECK
    constraint names the column ``offset``, a reserved word in PostgreSQL, unquoted."""
    write_tree(tmp_path / "src", {"all_1_1_0/a.bin": b"a" * 100_000, "all_2_2_0/b.bin": b"b"})
    with Catalog.open(postgres_url, repo.id) as catalog:
        snapshot_directory(repo, catalog, "b1", tmp_path / "src")
        assert catalog.backups.committed_stamps() == repo.list_backups()
    assert rebuild(repo, postgres_url).backups_imported == 1


def test_a_postgresql_catalog_from_before_manifest_versions_is_migrated_with_its_rows(
    postgres_url: str,
) -> None:
    """Migration 0006 on PostgreSQL: a committed row keeps its size, with no version."""
    from alembic import command

    engine = make_engine(postgres_url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    repository_id = "a" * 32
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO catalog_meta VALUES ('repository_id', :id)"), {"id": repository_id}
        )
        conn.execute(
            text(
                "INSERT INTO backups (name, state, started_at, hostname, tool_version, "
                "clickhouse_version, logical_bytes, read_bytes, new_bytes, new_chunks, "
                "duration_ms, manifest_size) VALUES ('old', 'committed', "
                "'2026-01-01 00:00:00', 'h', '0.1', '', 1, 1, 1, 1, 1, 77)"
            )
        )
    engine.dispose()
    with Catalog.open(postgres_url, repository_id) as catalog:
        with catalog.db.read() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == SCHEMA_HEAD
        assert catalog.backups.committed_stamps() == {"old": ManifestStamp(77, None)}
