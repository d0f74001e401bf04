"""ClickHouseServer against both engines: lookups that must agree with the listing."""

from __future__ import annotations

from typing import Any

from tests.clickhouse.schema import create_realistic, odd_database, server_for
from tests.engines import Engine, ServerEngine


def test_one_table_looked_up_is_the_table_as_listed(engine: Engine, dbname: str) -> None:
    """`table()` reads one table (SHOW CREATE before 20.4, a name filter after), `tables()` all.

    A backup records the definition `table()` reads after FREEZE; it must be
    the very text the listing has, or restores and comparisons would differ
    by engine."""
    create_realistic(engine, dbname, rows=100)
    server = server_for(engine)
    try:
        for database in (dbname, odd_database(dbname)):
            listed = server.tables(database)
            assert listed
            for table in listed:
                assert server.table(database, table.name) == table
            assert server.table(database, "no such table") is None
    finally:
        server.close()


def test_a_table_dropped_between_its_two_lookups_is_not_there(server_engine: ServerEngine) -> None:
    """18.16 reads a table in two queries (its row, then SHOW CREATE): a DROP may come between.

    A backup skips a table dropped while it worked only if the lookup says
    None; an error there would fail the whole backup."""
    server_engine.sql("DROP DATABASE IF EXISTS lookup_race")
    server_engine.sql("CREATE DATABASE lookup_race")
    server_engine.sql("CREATE TABLE lookup_race.t (k UInt64) ENGINE = MergeTree ORDER BY k")
    server = server_for(server_engine)
    real = server.client.query

    def dropped_first(sql: str) -> Any:
        if sql.startswith("SHOW CREATE TABLE"):
            server_engine.sql("DROP TABLE lookup_race.t")
        return real(sql)

    server.client.query = dropped_first  # type: ignore[method-assign]
    try:
        assert server.table("lookup_race", "t") is None
    finally:
        server.close()
        server_engine.sql("DROP DATABASE lookup_race")
