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
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

SERVER_BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
PROTECTED_USER = "backup_operator"
PROTECTED_PASSWORD = "s3cr3t-Pa55word"


def require(reason: str) -> None:
    if os.environ.get("CASBACKUP_REQUIRE_ENGINES") == "1":
        pytest.fail(f"required test engine unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        for sub in ("data", "tmp", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "users.xml").write_text(USERS_XML)
        (self.root / "config.xml").write_text(
            f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{self.root}/log/server.log</log><errorlog>{self.root}/log/error.log</errorlog></logger>
  <tcp_port>{self.tcp_port}</tcp_port><http_port>{self.http_port}</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{self.root}/data/</path><tmp_path>{self.root}/tmp/</tmp_path>
  <users_config>{self.root}/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
"""
        )
        self.process = subprocess.Popen(
            [SERVER_BINARY, f"--config-file={self.root / 'config.xml'}"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "log" / "stderr.log", "wb"),  # noqa: SIM115 -- lives as long as the server
            cwd=self.root,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited: {(self.root / 'log' / 'stderr.log').read_text()[-2000:]}"
                )
            try:
                self.sql("SELECT 1")
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("clickhouse-server did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

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
