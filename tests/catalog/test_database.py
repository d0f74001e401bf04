"""Opening catalogs: migrations, version checks, pragmas, ownership."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from casbackup.catalog import Catalog
from casbackup.catalog.database import CatalogDatabase, make_engine, redact_url
from casbackup.catalog.models import Base
from casbackup.errors import CatalogError, CatalogMismatch, CatalogVersionError, ConfigError

REPO = "a" * 32


def test_fresh_catalog_matches_models(tmp_path: Path) -> None:
    """The migrations produce exactly the schema the models describe."""
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    CatalogDatabase.open(url, REPO).close()
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    assert diff == []


def test_schema_head_constant_matches_the_migration_scripts() -> None:
    from alembic.script import ScriptDirectory

    from casbackup.catalog.database import SCHEMA_HEAD, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == SCHEMA_HEAD


def test_pragmas(tmp_path: Path) -> None:
    db = CatalogDatabase.open(f"sqlite:///{tmp_path / 'c.sqlite'}", REPO)
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    db.close()


def test_foreign_keys_enforced(tmp_path: Path) -> None:
    db = CatalogDatabase.open(f"sqlite:///{tmp_path / 'c.sqlite'}", REPO)
    with pytest.raises(Exception, match="FOREIGN KEY"), db.write() as conn:
        conn.exec_driver_sql(
            'INSERT INTO chunks (digest, pack_id, "offset", length, raw_size, compression) '
            f"VALUES ('{'0' * 64}', 999, 0, 1, 1, 0)"
        )
    db.close()


def test_digest_check_constraint(tmp_path: Path) -> None:
    db = CatalogDatabase.open(f"sqlite:///{tmp_path / 'c.sqlite'}", REPO)
    with pytest.raises(Exception, match="CHECK"), db.write() as conn:
        conn.exec_driver_sql("INSERT INTO files (digest, size, chunk_count) VALUES ('ABC', 1, 1)")
    db.close()


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    for _ in range(3):
        CatalogDatabase.open(url, REPO).close()


def test_catalog_of_a_newer_casbackup_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    CatalogDatabase.open(f"sqlite:///{path}", REPO).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(CatalogVersionError) as caught:
        CatalogDatabase.open(f"sqlite:///{path}", REPO)
    assert "9999_from_the_future" in caught.value.message
    assert "catalog rebuild" in caught.value.message


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(CatalogError, match="not a casbackup catalog"):
        CatalogDatabase.open(f"sqlite:///{path}", REPO)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="not a database"):
        CatalogDatabase.open(f"sqlite:///{path}", REPO)


def test_catalog_of_another_repository_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    CatalogDatabase.open(url, REPO).close()
    with pytest.raises(CatalogMismatch):
        CatalogDatabase.open(url, "b" * 32)


def test_concurrent_first_opens_create_one_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            CatalogDatabase.open(url, REPO).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_invalid_url() -> None:
    with pytest.raises(ConfigError, match="invalid catalog URL"):
        Catalog.open("not a url at all", REPO)


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql+pg8000://u:Sekr3t@db/cat", "needs the Python module 'pg8000'"),
        ("mysql+pymysql://u:Sekr3t@db/cat", "needs the Python module 'pymysql'"),
        ("foo://u:Sekr3t@db/cat", "knows no database 'foo'"),
        ("sqlite://u:Sekr3t@/path", "Invalid SQLite URL"),
    ],
)
def test_a_url_sqlalchemy_cannot_use_is_a_one_line_configuration_error(url: str, says: str) -> None:
    """Missing drivers, unknown dialects and malformed SQLite URLs surface when the engine is made."""
    for driver in ("pg8000", "pymysql"):
        if driver in url and importlib.util.find_spec(driver) is not None:
            pytest.skip(f"{driver} is installed here")
    with pytest.raises(ConfigError) as caught:
        Catalog.open(url, REPO)
    message = caught.value.message
    assert says in message and "\n" not in message and "Sekr3t" not in message


def test_password_is_redacted() -> None:
    assert "s3cret" not in redact_url("postgresql://u:s3cret@db/cat")


def test_catalog_at_an_older_revision_is_migrated_with_its_data(tmp_path: Path) -> None:
    """A 0001 catalog (casbackup before leases) upgrades in place and keeps every row."""
    from alembic import command

    from casbackup.catalog.database import SCHEMA_HEAD, _alembic_config

    path = tmp_path / "old.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO catalog_meta VALUES ('repository_id', ?)", (REPO,))
        raw.execute(
            "INSERT INTO packs (digest, size, chunk_count, state, created_at) "
            f"VALUES ('{'a' * 64}', 100, 1, 'live', '2026-01-01 00:00:00')"
        )
        raw.execute(
            "INSERT INTO backups (name, state, started_at, hostname, tool_version, clickhouse_version, "
            "logical_bytes, read_bytes, new_bytes, new_chunks, duration_ms) "
            "VALUES ('old', 'committed', '2026-01-01 00:00:00', 'h', '0.1', '', 1, 1, 1, 1, 1)"
        )
    engine.dispose()

    db = CatalogDatabase.open(f"sqlite:///{path}", REPO)
    with db.read() as conn:
        assert (
            conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == SCHEMA_HEAD
        )
        assert conn.exec_driver_sql("SELECT name, run_id FROM backups").all() == [("old", None)]
        assert conn.exec_driver_sql("SELECT size, created_by FROM packs").all() == [(100, None)]
    db.close()


def test_a_dropped_table_is_a_one_line_catalog_error_on_every_path(tmp_path: Path) -> None:
    """read(), write(), ORM sessions and the chunk index's raw DB-API connections alike."""
    from sqlalchemy import select

    from casbackup.catalog.models import Chunk

    path = tmp_path / "c.sqlite"
    with Catalog.open(f"sqlite:///{path}", REPO) as catalog:
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA foreign_keys = OFF")
            raw.execute("DROP TABLE chunks")
            raw.execute("DROP TABLE backups")

        def write() -> None:
            with catalog.db.write() as conn:
                conn.execute(select(Chunk.digest))

        for reach in (
            lambda: catalog.index.known([b"\x01" * 32]),  # a raw DB-API connection
            lambda: catalog.index.locate([b"\x01" * 32]),  # read()
            lambda: catalog.backups.load("b"),  # an ORM session
            write,
        ):
            with pytest.raises(CatalogError) as caught:
                reach()
            message = caught.value.message
            assert "no such table: " in message and "\n" not in message
            assert "casbackup catalog rebuild" in message


def test_a_broken_constraint_is_left_a_bug(tmp_path: Path) -> None:
    """IntegrityError means casbackup wrote something wrong, not that the catalog is damaged."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from casbackup.catalog.models import CatalogMeta

    db = CatalogDatabase.open(f"sqlite:///{tmp_path / 'c.sqlite'}", REPO)
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(insert(CatalogMeta).values(key="repository_id", value="b" * 32))
    db.close()


def test_a_catalog_held_past_the_busy_timeout_is_no_reason_to_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's long write holds SQLite's lock: run again, nothing is damaged."""
    from casbackup.catalog import database

    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "c.sqlite"
    with Catalog.open(f"sqlite:///{path}", REPO) as catalog:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(CatalogError) as caught, catalog.db.write() as conn:
                conn.exec_driver_sql("DELETE FROM chunks")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    message = caught.value.message
    assert "database is locked; nothing is damaged: run the command again" in message
    assert "catalog rebuild" not in message


@pytest.mark.parametrize("inodes_left", [0, 1000])
def test_a_catalog_on_a_full_disk_says_so_and_not_to_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inodes_left: int
) -> None:
    """A full disk under the catalog was "disk I/O error; if the catalog is damaged, rebuild it",
    from every command, `list` too: a rebuild would need the space as well."""
    from casbackup.catalog import database

    path = tmp_path / "c.sqlite"
    with Catalog.open(f"sqlite:///{path}", REPO) as catalog:
        blocks_left = 1000 if inodes_left == 0 else 0
        full = os.statvfs_result(
            (4096, 4096, 10**6, blocks_left, blocks_left, 10**6, 0, inodes_left, 0, 255)
        )
        monkeypatch.setattr(database.os, "statvfs", lambda _: full)
        with pytest.raises(CatalogError) as caught, catalog.db.write() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 1")  # SQLITE_FULL, as on a full disk
            conn.exec_driver_sql("INSERT INTO catalog_meta VALUES ('x', zeroblob(1000000))")
    message = caught.value.message
    assert "database or disk is full" in message
    assert f"no space left in {tmp_path}: free some there" in message
    assert "catalog rebuild" not in message and "\n" not in message
