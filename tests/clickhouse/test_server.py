"""ClickHouseServer against both engines: lookups that must agree with the listing."""

from __future__ import annotations

from tests.clickhouse.schema import create_realistic, odd_database, server_for
from tests.engines import Engine


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
