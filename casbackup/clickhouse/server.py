"""What casbackup asks of a ClickHouse server, on top of either adapter.

Versions differ a lot between 18.16 (the Debian package) and 26.x (chdb):
no ``system.disks``, ``data_path`` instead of ``data_paths``, no UUIDs, no
UNFREEZE. Instead of branching on version numbers, ``ServerInfo`` looks at
which system tables and columns exist and remembers what it found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from casbackup import interrupts
from casbackup.clickhouse.client import ClickHouseClient
from casbackup.clickhouse.sql import qualified, quote_identifier, quote_string
from casbackup.errors import ClickHouseError

# Databases that are never backed up: ClickHouse's own, and verify's scratch space.
SYSTEM_DATABASES = frozenset({"system", "INFORMATION_SCHEMA", "information_schema"})
SCRATCH_PREFIX = "_casbackup_verify_"
# CHECK TABLE on MergeTree tables (it re-hashes every file against checksums.txt):
# MergeTree support arrived during 19.x; casbackup relies on it from 20.1.
CHECK_TABLE_SINCE = (20, 1)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:4])


@dataclass(frozen=True)
class ServerInfo:
    version: str
    system_tables: frozenset[str]
    table_columns: frozenset[str]
    part_columns: frozenset[str]
    database_columns: frozenset[str]
    settings: frozenset[str]

    @property
    def has_disks(self) -> bool:
        return "disks" in self.system_tables

    @property
    def has_data_paths(self) -> bool:
        return "data_paths" in self.table_columns

    @property
    def has_uuids(self) -> bool:
        return "uuid" in self.table_columns

    @property
    def has_unfreeze(self) -> bool:
        # UNFREEZE is syntax, not a table or a setting; it arrived in 21.4.
        return version_tuple(self.version) >= (21, 4)

    @property
    def has_verbose_freeze(self) -> bool:
        return "alter_partition_verbose_result" in self.settings

    @property
    def schema_settings(self) -> dict[str, int]:
        """Settings that let a restore replay any CREATE this server once accepted.

        Experimental or "suspicious" types (LowCardinality on 18.16, JSON and
        Variant today) and deprecated syntax need a setting at creation time;
        the table existed, so the restore must be allowed to recreate it.
        """
        return {
            name: 1
            for name in sorted(self.settings)
            if name.startswith(("allow_experimental_", "allow_suspicious_", "allow_deprecated_"))
        }

    @property
    def has_check_table(self) -> bool:
        return version_tuple(self.version) >= CHECK_TABLE_SINCE

    @property
    def show_create_is_create_table_query(self) -> bool:
        """SHOW CREATE TABLE prints system.tables' create_table_query, one line, as it did before 20.4.

        20.4 made SHOW CREATE multi-line (ClickHouse PR 10049). Before it,
        system.tables also builds that column for every table of the database
        before filtering by name (18.16: ~20 ms per lookup with 300 tables),
        while SHOW CREATE reads the one table.
        """
        return version_tuple(self.version) < (20, 4)


@dataclass(frozen=True)
class Disk:
    name: str
    path: Path
    is_local: bool = True


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    engine: str
    create_sql: str


@dataclass(frozen=True)
class TableInfo:
    database: str
    name: str
    engine: str
    create_sql: str
    uuid: str | None
    data_paths: tuple[str, ...]
    dependents: tuple[tuple[str, str], ...] = ()  # objects that read from this one (MVs)
    loading_dependencies: tuple[tuple[str, str], ...] = ()  # objects this one needs (dictionaries)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def qualified(self) -> str:
        return f"{self.database}.{self.name}"

    @property
    def has_data(self) -> bool:
        """MergeTree-family tables hold parts that FREEZE can snapshot."""
        return self.engine.endswith("MergeTree")

    @property
    def data_left_out(self) -> bool:
        """Rows on this host that a backup does not hold: only the schema is backed up."""
        return holds_rows_not_backed_up(self.engine)

    @property
    def is_inner_table(self) -> bool:
        return self.name.startswith((".inner.", ".inner_id."))


# Engines that keep rows on the ClickHouse host but have no parts to FREEZE
# (views, dictionaries and proxies like Distributed hold none of their own;
# a Buffer's rows are on their way to its destination table, seconds behind).
_ROWS_NOT_BACKED_UP = frozenset(
    {"Log", "TinyLog", "StripeLog", "Memory", "Set", "Join", "File", "EmbeddedRocksDB"}
)


def holds_rows_not_backed_up(engine: str) -> bool:
    return engine in _ROWS_NOT_BACKED_UP


@dataclass(frozen=True)
class PartInfo:
    name: str
    partition_id: str
    partition: str  # the partition's value as the server prints it, e.g. 202401 or ('eu', 3)
    min_block: int
    max_block: int
    level: int
    data_version: int
    rows: int
    bytes_on_disk: int
    disk: str
    active: bool


class ClickHouseServer:
    def __init__(self, client: ClickHouseClient) -> None:
        self.client = client

    def describe(self) -> str:
        return self.client.describe()

    def clone(self) -> ClickHouseServer | None:
        """The same server over a second connection (for work in another thread), if possible."""
        client = self.client.clone()
        if client is None:
            return None
        twin = ClickHouseServer(client)
        for cached in ("info", "disks"):
            if cached in self.__dict__:
                twin.__dict__[cached] = self.__dict__[cached]
        return twin

    def close(self) -> None:
        self.client.close()

    # --- what this server is ---------------------------------------------------

    @cached_property
    def info(self) -> ServerInfo:
        version = str(self.client.query("SELECT version() AS v")[0]["v"])

        def names(sql: str) -> frozenset[str]:
            return frozenset(str(r["name"]) for r in self.client.query(sql))

        return ServerInfo(
            version=version,
            system_tables=names("SELECT name FROM system.tables WHERE database = 'system'"),
            table_columns=names(
                "SELECT name FROM system.columns WHERE database = 'system' AND table = 'tables'"
            ),
            part_columns=names(
                "SELECT name FROM system.columns WHERE database = 'system' AND table = 'parts'"
            ),
            database_columns=names(
                "SELECT name FROM system.columns WHERE database = 'system' AND table = 'databases'"
            ),
            settings=names(
                "SELECT name FROM system.settings WHERE name = 'alter_partition_verbose_result' "
                "OR name LIKE 'allow\\_experimental\\_%\\_type' OR name LIKE 'allow\\_suspicious\\_%' "
                "OR name IN ('allow_deprecated_database_ordinary', 'allow_deprecated_syntax_for_merge_tree')"
            ),
        )

    @cached_property
    def disks(self) -> list[Disk]:
        if self.info.has_disks:
            columns = {
                str(r["name"])
                for r in self.client.query(
                    "SELECT name FROM system.columns WHERE database = 'system' AND table = 'disks'"
                )
            }
            remote = "is_remote" if "is_remote" in columns else "0"
            rows = self.client.query(f"SELECT name, path, {remote} AS remote FROM system.disks")
            return [Disk(str(r["name"]), Path(str(r["path"])), not int(r["remote"])) for r in rows]
        # 18.16: one disk, the server's <path>; a database's data path is <path>data/<db>/.
        rows = self.client.query("SELECT data_path FROM system.databases WHERE name = 'system'")
        if not rows:
            raise ClickHouseError(detail="cannot find the server's data path (no system database?)")
        return [Disk("default", Path(str(rows[0]["data_path"])).parent.parent)]

    def disk_of(self, path: str) -> Disk:
        """The disk a table data path lies on (longest matching disk root)."""
        target = Path(path)
        matches = [d for d in self.disks if target == d.path or d.path in target.parents]
        if not matches:
            raise ClickHouseError(detail=f"data path {path} is on no known disk")
        return max(matches, key=lambda d: len(d.path.parts))

    # --- catalogue of objects ----------------------------------------------------

    def databases(self) -> list[DatabaseInfo]:
        rows = self.client.query("SELECT name, engine FROM system.databases ORDER BY name")
        result = []
        for r in rows:
            name = str(r["name"])
            if name in SYSTEM_DATABASES:
                continue
            result.append(DatabaseInfo(name, str(r["engine"]), self.show_create_database(name)))
        return result

    def show_create_database(self, name: str) -> str:
        rows = self.client.query(f"SHOW CREATE DATABASE {quote_identifier(name)}")
        return str(next(iter(rows[0].values())))

    def tables(
        self, database: str | None = None, name: str | None = None, *, create_sql: bool = True
    ) -> list[TableInfo]:
        """Tables outside the system databases; without ``create_sql`` their statements are ''."""
        cols = self.info.table_columns
        select = [
            "database",
            "name",
            "engine",
            "create_table_query" if create_sql else "'' AS create_table_query",
            "toString(uuid) AS uuid" if "uuid" in cols else "'' AS uuid",
            "data_paths" if self.info.has_data_paths else "[data_path] AS data_paths",
            "dependencies_database"
            if "dependencies_database" in cols
            else "[] AS dependencies_database",
            "dependencies_table" if "dependencies_table" in cols else "[] AS dependencies_table",
        ]
        if "loading_dependencies_table" in cols:
            select += ["loading_dependencies_database", "loading_dependencies_table"]
        where = "is_temporary = 0"
        if database is not None:
            where += f" AND database = {quote_string(database)}"
        if name is not None:
            where += f" AND name = {quote_string(name)}"
        rows = self.client.query(
            f"SELECT {', '.join(select)} FROM system.tables WHERE {where} ORDER BY database, name"
        )
        tables = []
        for r in rows:
            if str(r["database"]) in SYSTEM_DATABASES:
                continue
            uuid = str(r["uuid"] or "")
            tables.append(
                TableInfo(
                    database=str(r["database"]),
                    name=str(r["name"]),
                    engine=str(r["engine"]),
                    create_sql=str(r["create_table_query"]),
                    uuid=None
                    if not uuid or uuid == "00000000-0000-0000-0000-000000000000"
                    else uuid,
                    data_paths=tuple(str(p) for p in r["data_paths"] if p),
                    dependents=tuple(
                        zip(r["dependencies_database"], r["dependencies_table"], strict=True)
                    ),
                    loading_dependencies=tuple(
                        zip(
                            r.get("loading_dependencies_database", []),
                            r.get("loading_dependencies_table", []),
                            strict=True,
                        )
                    ),
                )
            )
        return tables

    def table(self, database: str, name: str) -> TableInfo | None:
        """One table, as ``tables`` lists it.

        A backup looks each table up again after its FREEZE, so this must not
        cost in proportion to the database: 300 tables once took 300².
        """
        if not self.info.show_create_is_create_table_query:
            found = self.tables(database, name)  # the name filter reaches system.tables
            return found[0] if found else None
        found = self.tables(database, name, create_sql=False)
        if not found:
            return None
        try:
            rows = self.client.query(f"SHOW CREATE TABLE {qualified(database, name)}")
        except ClickHouseError:
            if not self.tables(database, name, create_sql=False):
                return None  # dropped between the two queries
            raise
        return replace(found[0], create_sql=str(next(iter(rows[0].values()))))

    def stored_columns(self, database: str, table: str) -> dict[str, str]:
        """Name and type of the columns the table's parts store (ALIAS and EPHEMERAL ones are not)."""
        rows = self.client.query(
            "SELECT name, type FROM system.columns "
            f"WHERE database = {quote_string(database)} AND table = {quote_string(table)} "
            "AND default_kind NOT IN ('ALIAS', 'EPHEMERAL')"
        )
        return {str(r["name"]): str(r["type"]) for r in rows}

    def database_exists(self, name: str) -> bool:
        return bool(
            self.client.query(
                f"SELECT name FROM system.databases WHERE name = {quote_string(name)}"
            )
        )

    def parts(self, database: str, table: str, *, active_only: bool = True) -> list[PartInfo]:
        cols = self.info.part_columns
        disk = "disk_name" if "disk_name" in cols else "'default' AS disk_name"
        where = f"database = {quote_string(database)} AND table = {quote_string(table)}"
        if active_only:
            where += " AND active"
        rows = self.client.query(
            "SELECT name, partition_id, partition, min_block_number, max_block_number, level, data_version, rows, "
            f"bytes_on_disk, {disk}, active FROM system.parts WHERE {where}"
        )
        return [
            PartInfo(
                name=str(r["name"]),
                partition_id=str(r["partition_id"]),
                partition=str(r["partition"]),
                min_block=int(r["min_block_number"]),
                max_block=int(r["max_block_number"]),
                level=int(r["level"]),
                data_version=int(r["data_version"]),
                rows=int(r["rows"]),
                bytes_on_disk=int(r["bytes_on_disk"]),
                disk=str(r["disk_name"]),
                active=bool(int(r["active"])),
            )
            for r in rows
        ]

    def part_rows(
        self, database: str, table: str, partition_ids: Iterable[str] | None = None
    ) -> int:
        """Rows stored in the table's active parts, including rows a lightweight DELETE masks.

        ``partition_ids``: only in those partitions.
        """
        where = f"active AND database = {quote_string(database)} AND table = {quote_string(table)}"
        if partition_ids is not None:
            ids = ", ".join(quote_string(p) for p in sorted(set(partition_ids))) or "''"
            where += f" AND partition_id IN ({ids})"
        rows = self.client.query(f"SELECT sum(rows) AS r FROM system.parts WHERE {where}")
        return int(rows[0]["r"] or 0)

    def count(self, database: str, table: str) -> int:
        return int(
            self.client.query(f"SELECT count() AS c FROM {qualified(database, table)}")[0]["c"]
        )

    # --- changes ---------------------------------------------------------------

    def execute(self, sql: str) -> None:
        self.client.execute(sql)

    def create(self, sql: str) -> None:
        """Run a CREATE statement recorded by a backup."""
        self.client.execute(sql, settings=self.info.schema_settings)

    def freeze(self, database: str, table: str, name: str) -> None:
        # The server finishes a FREEZE even if we stop waiting; let it, so that
        # the shadow we then remove is complete (see casbackup.interrupts).
        with interrupts.deferred():
            self.client.execute(
                f"ALTER TABLE {qualified(database, table)} FREEZE WITH NAME {quote_string(name)}"
            )

    def unfreeze(self, database: str, table: str, name: str) -> None:
        self.client.execute(
            f"ALTER TABLE {qualified(database, table)} UNFREEZE WITH NAME {quote_string(name)}"
        )

    def attach_part(self, database: str, table: str, part: str) -> None:
        with interrupts.deferred():
            self.client.execute(
                f"ALTER TABLE {qualified(database, table)} ATTACH PART {quote_string(part)}"
            )

    def drop_table(self, database: str, table: str, *, dictionary: bool = False) -> None:
        # DROP TABLE drops views too, on every version (18.16 has no DROP VIEW).
        kind = "DICTIONARY" if dictionary else "TABLE"
        sync = (
            " SYNC" if self.info.has_uuids else ""
        )  # Atomic: free the UUID and the store path now
        self.client.execute(f"DROP {kind} IF EXISTS {qualified(database, table)}{sync}")

    def drop_partition(self, database: str, table: str, partition_id: str) -> None:
        self.client.execute(
            f"ALTER TABLE {qualified(database, table)} DROP PARTITION ID {quote_string(partition_id)}"
        )

    def truncate(self, database: str, table: str) -> None:
        self.client.execute(f"TRUNCATE TABLE {qualified(database, table)}")

    def drop_database(self, name: str) -> None:
        sync = " SYNC" if self.info.has_uuids else ""
        self.client.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}{sync}")

    def macros(self) -> dict[str, str]:
        if "macros" not in self.info.system_tables:
            return {}
        return {
            str(r["macro"]): str(r["substitution"])
            for r in self.client.query("SELECT macro, substitution FROM system.macros")
        }


def names_of(tables: Iterable[TableInfo]) -> list[str]:
    return [t.qualified for t in tables]
