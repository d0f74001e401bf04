"""A realistic schema for round-trip tests, per engine, and how to fingerprint it."""

from __future__ import annotations

from casbackup.clickhouse.client import connect, parse_url
from casbackup.clickhouse.fingerprint import Fingerprint, fingerprint
from casbackup.clickhouse.server import ClickHouseServer
from tests.engines import Engine

ODD_TABLE = "spaced name ü `x`"


def odd_database(db: str) -> str:
    return f"{db} ü-db"


def q(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def create_realistic(engine: Engine, db: str, rows: int = 30_000) -> None:
    """Tables covering the types and part shapes casbackup must round-trip."""
    sql = engine.sql
    sql(f"CREATE DATABASE {q(db)}")
    sql(f"CREATE DATABASE {q(odd_database(db))}")
    common = (
        "id UInt64, d Date, s String, n Nullable(String), t Tuple(UInt8, String), "
        "a Array(Nullable(UInt32)), dec Decimal(18, 4), bin String, f FixedString(4), "
        "e Enum8('a' = 1, 'b' = 2), dt DateTime"
    )
    values = (
        "number, toDate('2024-01-01') + number % 90, toString(number), "
        "if(number % 7 = 0, NULL, toString(number * 3)), (toUInt8(number % 200), 'x'), "
        "[toUInt32(number % 5), NULL], toDecimal64(number / 7, 4), "
        "reinterpretAsString(cityHash64(number)), 'abcd', if(number % 2 = 0, 'a', 'b'), "
        "toDateTime('2024-01-01 00:00:00') + number"
    )
    if engine.modern:
        modern_cols = ", lc LowCardinality(String), m Map(String, UInt64), dt64 DateTime64(3)"
        modern_vals = ", toString(number % 10), map('k', number), toDateTime64('2024-01-01 00:00:00', 3) + number"
        sql(
            f"CREATE TABLE {q(db)}.events_wide ({common}{modern_cols}, "
            "INDEX idx_s s TYPE bloom_filter GRANULARITY 1, "
            "PROJECTION by_d (SELECT d, count() GROUP BY d)) "
            "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id SETTINGS min_bytes_for_wide_part = 0"
        )
        sql(
            f"CREATE TABLE {q(db)}.events_compact ({common}{modern_cols}) ENGINE = MergeTree "
            "PARTITION BY toYYYYMM(d) ORDER BY id "
            "SETTINGS min_bytes_for_wide_part = 1000000000, min_rows_for_wide_part = 1000000000"
        )
        for table in ("events_wide", "events_compact"):
            for start in (0, rows // 2):
                sql(
                    f"INSERT INTO {q(db)}.{table} SELECT {values}{modern_vals} FROM numbers({start}, {rows // 2})"
                )
        source = "events_wide"
    else:
        engine.sql_with_settings(  # type: ignore[attr-defined]
            f"CREATE TABLE {q(db)}.events ({common}, lc LowCardinality(String)) ENGINE = MergeTree "
            "PARTITION BY toYYYYMM(d) ORDER BY id",
            {"allow_experimental_low_cardinality_type": 1},
        )
        for start in (0, rows // 2):
            sql(
                f"INSERT INTO {q(db)}.events SELECT {values}, toString(number % 10) FROM numbers({start}, {rows // 2})"
            )
        source = "events"
    sql(f"CREATE TABLE {q(db)}.empty (id UInt64) ENGINE = MergeTree ORDER BY id")
    sql(
        f"CREATE TABLE {q(odd_database(db))}.{q(ODD_TABLE)} (k UInt32, v String) ENGINE = MergeTree ORDER BY k"
    )
    sql(
        f"INSERT INTO {q(odd_database(db))}.{q(ODD_TABLE)} SELECT 1, 'one' UNION ALL SELECT 2, 'two'"
    )
    sql(f"CREATE TABLE {q(db)}.agg (d Date, c UInt64) ENGINE = SummingMergeTree ORDER BY d")
    sql(
        f"CREATE MATERIALIZED VIEW {q(db)}.mv TO {q(db)}.agg AS SELECT d, count() AS c FROM {q(db)}.{source} GROUP BY d"
    )
    sql(
        f"CREATE MATERIALIZED VIEW {q(db)}.mv_inner ENGINE = MergeTree ORDER BY id "
        f"AS SELECT id, s FROM {q(db)}.{source} WHERE id % 100 = 0"
    )
    sql(f"CREATE VIEW {q(db)}.v AS SELECT id, s FROM {q(db)}.{source} WHERE id < 100")
    sql(
        f"INSERT INTO {q(db)}.{source} SELECT {values}{modern_vals if engine.modern else ', toString(number % 10)'} FROM numbers({rows}, 1000)"
    )


def create_long_part_names(engine: Engine, db: str, values: tuple[int, ...] = (1,)) -> None:
    """Database ``db`` (quoted by the caller) with table t partitioned by ten Int64 columns, one
    part per value of v: part names of 215+ bytes, longer than casbackup's process-tagged
    temporary names leave room for. Merges are stopped, so the parts stay apart."""
    columns = ", ".join(f"a{i} Int64" for i in range(10))
    key = ", ".join(f"a{i}" for i in range(10))
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.t ({columns}, v UInt8) ENGINE = MergeTree "
        f"PARTITION BY ({key}) ORDER BY v"
    )
    engine.sql(f"SYSTEM STOP MERGES {db}.t")
    # 20 bytes a column; not INT64_MIN, whose literal the 18.16 server never finishes parsing.
    row = ", ".join(["toInt64(-9223372036854775807)"] * 10)
    for v in values:
        engine.sql(f"INSERT INTO {db}.t SELECT {row}, {v}")


def server_for(engine: Engine) -> ClickHouseServer:
    return ClickHouseServer(connect(parse_url(engine.url)))


def fingerprints(engine: Engine, databases: list[str]) -> dict[str, Fingerprint]:
    """Fingerprint of every table with data in ``databases`` (inner tables by their view)."""
    server = server_for(engine)
    result: dict[str, Fingerprint] = {}
    try:
        for table in server.tables():
            if table.database not in databases or not table.has_data:
                continue
            key = f"{table.database}.{table.name}"
            if table.is_inner_table:
                key = f"{table.database}.<inner of mv_inner>"
            result[key] = fingerprint(server, table.database, table.name)
    finally:
        server.close()
    return result
