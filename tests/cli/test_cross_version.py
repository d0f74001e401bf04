"""Backups moved between ClickHouse versions: the 18.16 server and chdb (26.x) share one repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode
from tests.cli.test_verify import set_fingerprints
from tests.clickhouse.schema import create_realistic, fingerprints, odd_database, q
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
    chdb_version = chdb_engine.value("SELECT version()")
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
        # After a rolled-back upgrade the operator may try all the same.
        forced = cli(server_engine, "restore", "modern", "--schema-only", "--allow-older-server")
        assert forced.code == 0, forced.stderr
        assert server_engine.sql(f"SELECT name FROM system.tables WHERE database = '{db}'") == [
            ("t",)
        ]
        server_engine.sql(f"DROP TABLE {db}.t")
        # A drill here cannot test-restore it: said, not failed, and no flag verify lacks.
        drill = cli(server_engine, "verify", "modern", "--restore")
        assert drill.code == ExitCode.WARNING, drill.stderr
        assert drill.stderr.strip().endswith(
            "warning: backup modern not test-restored: made on ClickHouse "
            f"{chdb_version}, newer than this server's 18.16.1; test-restore it on ClickHouse "
            f"{'.'.join(chdb_version.split('.')[:2])} or later"
        ), drill.stderr
        assert "verify OK (with warnings)" in drill.stdout
        assert not [
            n
            for (n,) in server_engine.sql("SELECT name FROM system.databases")
            if n.startswith("_casbackup_verify")
        ]
    finally:
        for engine in (server_engine, chdb_engine):
            engine.sql(f"DROP DATABASE IF EXISTS {db}")


def test_a_backup_of_18_16_restores_and_verifies_on_26(
    server_engine: ServerEngine,
    chdb_engine: ChdbEngine,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upgrade path: 18.16's old-syntax tables, views and Ordinary database into 26.x."""
    set_fingerprints(tmp_path, monkeypatch, "true")
    db, copy = "xv_older", "xv_older_copy"
    s = server_engine.sql
    for engine in (server_engine, chdb_engine):
        for name in (db, copy):
            engine.sql(f"DROP DATABASE IF EXISTS {name}")
    s(f"CREATE DATABASE {db}")
    s(
        f"CREATE TABLE {db}.old (d Date, k UInt64, s String, n Nullable(Int32), a Array(UInt16)) "
        "ENGINE = MergeTree(d, (k), 8192)"
    )
    s(
        f"INSERT INTO {db}.old SELECT toDate('2024-01-01') + number % 60, number, toString(number), "
        "if(number % 3 = 0, NULL, toInt32(number)), [toUInt16(number % 7)] FROM system.numbers LIMIT 3000"
    )
    s(
        f"CREATE TABLE {db}.sampled (d Date, k UInt64) "
        "ENGINE = MergeTree(d, intHash32(k), (k, intHash32(k)), 8192)"
    )
    s(f"INSERT INTO {db}.sampled SELECT toDate('2024-02-01'), number FROM system.numbers LIMIT 500")
    s(
        f"CREATE TABLE {db}.new (d Date, k UInt64, v Float64) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY k"
    )
    s(
        f"INSERT INTO {db}.new SELECT toDate('2024-01-01') + number % 90, number, number / 3 FROM system.numbers LIMIT 2000"
    )
    s(
        f"CREATE TABLE {db}.rep (d Date, k UInt64, ver UInt32) ENGINE = ReplacingMergeTree(d, (k), 8192, ver)"
    )
    s(
        f"CREATE TABLE {db}.col (d Date, k UInt64, sign Int8) ENGINE = CollapsingMergeTree(d, (k), 8192, sign)"
    )
    s(
        f"CREATE TABLE {db}.agg (d Date, c UInt64) ENGINE = SummingMergeTree PARTITION BY toYYYYMM(d) ORDER BY d"
    )
    s(
        f"CREATE MATERIALIZED VIEW {db}.mv TO {db}.agg AS SELECT d, count() AS c FROM {db}.new GROUP BY d"
    )
    s(
        f"CREATE MATERIALIZED VIEW {db}.mv_inner ENGINE = SummingMergeTree(d, (d), 8192) "
        f"AS SELECT d, count() AS c FROM {db}.old GROUP BY d"
    )
    s(f"CREATE VIEW {db}.v AS SELECT k, s FROM {db}.old WHERE k < 10")
    s(
        f"INSERT INTO {db}.rep SELECT toDate('2024-01-01'), number % 100, number FROM system.numbers LIMIT 1000"
    )
    s(f"INSERT INTO {db}.col SELECT toDate('2024-01-01'), number, 1 FROM system.numbers LIMIT 300")
    s(
        f"INSERT INTO {db}.old (d, k, s) SELECT toDate('2024-03-01'), 100000 + number, 'x' FROM system.numbers LIMIT 50"
    )
    s(
        f"INSERT INTO {db}.new SELECT toDate('2024-03-01'), 100000 + number, 0 FROM system.numbers LIMIT 50"
    )
    before = fingerprints(server_engine, [db])
    assert len(before) == 7 and all(f.rows for f in before.values())
    try:
        assert cli(server_engine, "init").code == 0
        assert cli(server_engine, "create", "old", "--tables", f"{db}.*").code == 0
        restored = cli(chdb_engine, "restore", "old")
        assert restored.code == 0, restored.stderr
        assert fingerprints(chdb_engine, [db]) == before
        assert chdb_engine.value(f"SELECT count() FROM {db}.v") == 10
        assert (
            chdb_engine.value(f"SELECT engine FROM system.databases WHERE name = '{db}'")
            == "Ordinary"
        )
        copied = cli(chdb_engine, "restore", "old", "--as", f"{db}:{copy}")
        assert copied.code == 0, copied.stderr
        assert list(fingerprints(chdb_engine, [copy]).values()) == list(before.values())
        # The copy's views read the copy, and live: new rows flow into their targets.
        chdb_engine.sql(f"INSERT INTO {copy}.old (d, k) VALUES ('2024-05-05', 9999999)")
        chdb_engine.sql(f"INSERT INTO {copy}.new (d, k) VALUES ('2024-05-05', 9999999)")
        assert chdb_engine.value(f"SELECT sum(c) FROM {copy}.mv_inner") == 51
        assert chdb_engine.value(f"SELECT sum(c) FROM {copy}.agg") == 51
        assert chdb_engine.value(f"SELECT count() FROM {copy}.v") == 10
        drill = cli(chdb_engine, "verify", "old", "--restore", "--json")
        assert drill.code == 0, drill.stderr
        assert {t["fingerprint"] for t in drill.json()["tables"]} == {"match"}
    finally:
        for engine in (server_engine, chdb_engine):
            for name in (db, copy):
                engine.sql(f"DROP DATABASE IF EXISTS {name}")


def test_tables_of_an_18_16_backups_definitions_on_26_are_reused_without_a_type_conflict(
    server_engine: ServerEngine, chdb_engine: ChdbEngine, cli: Any
) -> None:
    """18.16's columns.txt and 26.x's system.columns spell the same types alike: no refusal."""
    db = "xv_types"
    for engine in (server_engine, chdb_engine):
        for name in (db, odd_database(db)):
            engine.sql(f"DROP DATABASE IF EXISTS {q(name)}")
    create_realistic(server_engine, db, rows=2000)
    server_engine.sql(
        f"CREATE TABLE {db}.more (a Decimal(18,2), b Nullable(Decimal32(3)), "
        "d DateTime('UTC'), e Enum16('x y' = 1, 'z,w' = -2), f FixedString(16), g Float64, "
        "h Int8, i UUID, j Nested(k UInt8, l String)) ENGINE = MergeTree ORDER BY tuple()"
    )
    server_engine.sql(f"INSERT INTO {db}.more (a, h) SELECT number / 3, 1 FROM numbers(50)")
    # 26.x names a versioned aggregate function's state type with its version, which the
    # 18.16 parts' columns.txt lacks: AggregateFunction(1, sumMap, ...).
    server_engine.sql(
        f"CREATE TABLE {db}.states (k UInt64, "
        "s AggregateFunction(sumMap, Array(UInt8), Array(UInt64)), "
        "u AggregateFunction(uniq, UInt64)) ENGINE = AggregatingMergeTree ORDER BY k"
    )
    server_engine.sql(
        f"INSERT INTO {db}.states SELECT number % 3, "
        "sumMapState([toUInt8(number % 5)], [toUInt64(number)]), uniqState(number) "
        "FROM numbers(100) GROUP BY number % 3"
    )

    def rows(engine: ServerEngine | ChdbEngine) -> dict[str, int]:
        return {
            f"{d}.{n}": int(engine.value(f"SELECT count() FROM {q(d)}.{q(n)}"))
            for d, n in engine.sql(
                "SELECT database, name FROM system.tables WHERE database IN "
                f"('{db}', '{odd_database(db)}') AND engine LIKE '%MergeTree' "
                "AND name NOT LIKE '.inner%'"
            )
        }

    before = rows(server_engine)
    try:
        assert cli(server_engine, "init").code == 0
        assert (
            cli(server_engine, "create", "old", "--tables", f"{db}.*,{odd_database(db)}.*").code
            == 0
        )
        schema = cli(chdb_engine, "restore", "old", "--schema-only")
        assert schema.code == 0, schema.stderr
        restored = cli(chdb_engine, "restore", "old", "--data-only")
        assert restored.code == 0, restored.stderr
        assert rows(chdb_engine) == before
        summed = f"SELECT toString(sum(a)), toString(sum(h)) FROM {db}.more"
        assert chdb_engine.sql(summed) == [("408.17", "50")] == server_engine.sql(summed)
        merged = f"SELECT k, toString(sumMapMerge(s)), uniqMerge(u) FROM {db}.states GROUP BY k"
        assert sorted(chdb_engine.sql(merged)) == sorted(server_engine.sql(merged))
    finally:
        for engine in (server_engine, chdb_engine):
            for name in (db, odd_database(db)):
                engine.sql(f"DROP DATABASE IF EXISTS {q(name)}")
