"""Backups moved between ClickHouse versions: the 18.16 server and chdb (26.x) share one repository."""

from __future__ import annotations

from typing import Any

from casbackup.errors import ExitCode
from tests.engines import ChdbEngine, ServerEngine


def test_a_backup_of_a_newer_server_is_refused_by_an_older_one_before_any_change(
    server_engine: ServerEngine, chdb_engine: ChdbEngine, cli: Any
) -> None:
    """Parts written by 26.x cannot be attached by 18.16: refused up front, not after CREATEs."""
    db = "xv_newer"
    for engine in (server_engine, chdb_engine):
        engine.sql(f"DROP DATABASE IF EXISTS {db}")
    chdb_engine.sql(f"CREATE DATABASE {db}")
    chdb_engine.sql(
        f"CREATE TABLE {db}.t (d Date, k UInt64, s String) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY k"
    )
    chdb_engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01'), number, 'x' FROM numbers(100)"
    )
    assert cli(chdb_engine, "init").code == 0
    assert cli(chdb_engine, "create", "modern", "--tables", f"{db}.*").code == 0
    # The database exists on the old server (created by hand, as before a migration).
    server_engine.sql(f"CREATE DATABASE {db}")
    try:
        for args in ((), ("--schema-only",), ("--as", f"{db}:{db}_copy")):
            restored = cli(server_engine, "restore", "modern", *args)
            assert restored.code == ExitCode.CONFLICT, restored.stderr
            lines = restored.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("casbackup: error:"), lines
            assert "18.16" in lines[0] and "nothing was changed" in lines[0], lines[0]
            assert (
                server_engine.sql(f"SELECT name FROM system.tables WHERE database = '{db}'") == []
            )
            assert (
                server_engine.sql(f"SELECT name FROM system.databases WHERE name = '{db}_copy'")
                == []
            )
        drill = cli(server_engine, "verify", "modern", "--restore")
        assert drill.code == ExitCode.CONFLICT, drill.stderr
        assert "nothing was changed" in drill.stderr and "Traceback" not in drill.stderr
        assert not [
            n
            for (n,) in server_engine.sql("SELECT name FROM system.databases")
            if n.startswith("_casbackup_verify")
        ]
    finally:
        for engine in (server_engine, chdb_engine):
            engine.sql(f"DROP DATABASE IF EXISTS {db}")
