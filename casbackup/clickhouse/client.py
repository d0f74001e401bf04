"""The one small interface casbackup uses to talk to ClickHouse, and how a URL selects an adapter.

Two adapters implement ``ClickHouseClient``:

- ``native`` (clickhouse-driver, the native TCP protocol): the production path
  for a ClickHouse server on the same host;
- ``embedded`` (chdb, ClickHouse in-process on a data directory): the demo and
  the modern engine of the test suite.

URLs::

    clickhouse://user:password@host:9000/?secure=false&connect_timeout=10
    clickhouses://user@host:9440/            (TLS)
    chdb:///var/lib/casbackup/demo            (embedded, absolute path)
    chdb:///var/lib/demo?config=/etc/demo.xml (embedded, with a server config file)

A password may also come from the config or CASBACKUP_CLICKHOUSE_PASSWORD;
``describe`` never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from casbackup.errors import ConfigError

Row = dict[str, Any]


class ClickHouseClient(Protocol):
    def query(self, sql: str) -> list[Row]:
        """Run a statement that returns rows; each row maps column name to value."""
        ...

    def execute(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        """Run a statement for its effect, with query-level settings."""
        ...

    def describe(self) -> str:
        """Where this client connects, for messages (no secrets)."""
        ...

    def clone(self) -> ClickHouseClient | None:
        """A second, independent connection to the same server, or None if there can be only one."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectionSpec:
    scheme: str  # "native" or "chdb"
    host: str = "127.0.0.1"
    port: int = 9000
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    connect_timeout: float = 10.0
    send_receive_timeout: float = 3600.0
    path: str = ""  # chdb data directory
    config_file: str = ""  # chdb: a server config file (users with access_management, backups...)

    def describe(self) -> str:
        if self.scheme == "chdb":
            return f"chdb://{self.path}" + (
                f"?config={self.config_file}" if self.config_file else ""
            )
        scheme = "clickhouses" if self.secure else "clickhouse"
        return f"{scheme}://{self.user}@{self.host}:{self.port}"

    def with_password(self, password: str | None) -> ConnectionSpec:
        return replace(self, password=password) if password else self


_TRUE = {"1", "true", "yes", "on"}


def parse_url(url: str) -> ConnectionSpec:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(detail=f"invalid ClickHouse URL: {exc}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "chdb":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/"):
            raise ConfigError(detail="chdb URL needs an absolute path: chdb:///var/lib/data")
        unknown = set(query) - {"config"}
        if unknown:
            raise ConfigError(detail=f"unknown chdb URL parameter(s): {', '.join(sorted(unknown))}")
        return ConnectionSpec(scheme="chdb", path=path, config_file=query.get("config", ""))
    if parts.scheme not in ("clickhouse", "clickhouses"):
        raise ConfigError(
            detail=f"unsupported ClickHouse URL scheme {parts.scheme!r} (use clickhouse://, clickhouses:// or chdb://)"
        )
    secure = parts.scheme == "clickhouses" or query.get("secure", "").lower() in _TRUE
    try:
        port = parts.port or (9440 if secure else 9000)
        connect_timeout = float(query.get("connect_timeout", 10.0))
        send_receive_timeout = float(query.get("send_receive_timeout", 3600.0))
    except ValueError as exc:
        raise ConfigError(detail=f"invalid ClickHouse URL: {exc}") from None
    unknown = set(query) - {"secure", "connect_timeout", "send_receive_timeout"}
    if unknown:
        raise ConfigError(
            detail=f"unknown ClickHouse URL parameter(s): {', '.join(sorted(unknown))}"
        )
    return ConnectionSpec(
        scheme="native",
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        secure=secure,
        connect_timeout=connect_timeout,
        send_receive_timeout=send_receive_timeout,
    )


def first_line(message: str) -> str:
    """ClickHouse appends a stack trace to messages; keep what a human needs."""
    text = message.strip()
    for marker in (". Stack trace:", "Stack trace:", "\n"):
        cut = text.find(marker)
        if cut > 0:
            text = text[:cut]
    return text.strip().rstrip(".")


def connect(spec: ConnectionSpec) -> ClickHouseClient:
    """Open a client for ``spec``; each adapter imports its driver only when chosen."""
    if spec.scheme == "chdb":
        from casbackup.clickhouse.embedded import EmbeddedClient

        return EmbeddedClient(spec.path, spec.config_file)
    from casbackup.clickhouse.native import NativeClient

    return NativeClient(spec)
