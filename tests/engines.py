"""The two real ClickHouse engines the tests run against (see CLICKHOUSE.md).

- ``ServerEngine``: the Debian ClickHouse 18.16 server, started once per test
  session as its own process on loopback ports, with a data directory and a
  users file of its own (a password-protected user lets tests check auth).
- ``ChdbEngine``: chdb (ClickHouse 26.x in-process) on a data directory. chdb
  locks its directory to one process, so the tests run casbackup in-process
  (``casbackup.cli.main.run``) against it; tests that must kill a process give
  that process a directory of its own.

Neither is mocked; when one is missing the tests that need it are skipped,
unless CASBACKUP_REQUIRE_ENGINES=1 (CI) turns that into a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tools.clickhouse_server import SERVER_BINARY, free_port, launch_server, stop_server

PROTECTED_USER = "backup_operator"
PROTECTED_PASSWORD = "s3cr3t-Pa55word"


def require(reason: str) -> None:
    if os.environ.get("CASBACKUP_REQUIRE_ENGINES") == "1":
        pytest.fail(f"required test engine unavailable: {reason}")
    pytest.skip(reason)


class Engine(Protocol):
    name: str
    url: str
    modern: bool

    def sql(self, query: str) -> list[tuple[Any, ...]]: ...

    def value(self, query: str) -> Any: ...

    def shadow_dirs(self) -> list[Path]: ...

    @property
    def data_root(self) -> Path: ...


USERS_XML = f"""<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile><quota>default</quota>
    </default>
    <{PROTECTED_USER}>
      <password>{PROTECTED_PASSWORD}</password>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile><quota>default</quota>
    </{PROTECTED_USER}>
  </users>
  <quotas><default></default></quotas>
</yandex>
"""


@dataclass
class ServerEngine:
    root: Path
    tcp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    name: str = "server"
    modern: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self.process = launch_server(
            self.root,
            tcp_port=self.tcp_port,
            http_port=self.http_port,
            users_xml=USERS_XML,
            ready=lambda: self.sql("SELECT 1"),
        )

    def stop(self) -> None:
        stop_server(self.process)

    def _client(self) -> Any:
        from clickhouse_driver import Client

        return Client("127.0.0.1", port=self.tcp_port, send_receive_timeout=120)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        client = self._client()
        try:
            return list(client.execute(query))
        finally:
            client.disconnect()

    def value(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def sql_with_settings(self, query: str, settings: dict[str, Any]) -> list[tuple[Any, ...]]:
        client = self._client()
        try:
            return list(client.execute(query, settings=settings))
        finally:
            client.disconnect()

    def shadow_dirs(self) -> list[Path]:
        shadow = self.data_root / "shadow"
        return sorted(p for p in shadow.glob("casbackup_*")) if shadow.exists() else []


@dataclass
class ChdbEngine:
    root: Path
    name: str = "chdb"
    modern: bool = True
    _session: Any = None

    @property
    def url(self) -> str:
        return f"chdb://{self.root}"

    @property
    def data_root(self) -> Path:
        return self.root

    def start(self) -> None:
        from chdb import session

        self._session = session.Session(str(self.root))

    def stop(self) -> None:
        if self._session is not None:
            self._session.close()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        import json

        text = self._session.query(query, "JSONCompact").bytes().decode()
        if not text.strip():
            return []
        return [tuple(row) for row in json.loads(text)["data"]]

    def value(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def shadow_dirs(self) -> list[Path]:
        shadow = self.root / "shadow"
        return sorted(p for p in shadow.glob("casbackup_*")) if shadow.exists() else []


def start_server(root: Path) -> Iterator[ServerEngine]:
    if not Path(SERVER_BINARY).exists():
        require("clickhouse-server (Debian package clickhouse-server) is not installed")
    engine = ServerEngine(root)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def start_chdb(root: Path) -> Iterator[ChdbEngine]:
    try:
        import chdb  # noqa: F401
    except ImportError:
        require("chdb is not installed (pip install chdb-core)")
    engine = ChdbEngine(root)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
