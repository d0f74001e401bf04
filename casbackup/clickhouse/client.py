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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

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
_FALSE = {"0", "false", "no", "off", ""}

# Seconds; clickhouse-driver hands them to socket.settimeout, which refuses NaN,
# negative values and anything past the platform's time_t ("Timeout value out
# of range" as an internal error), so the URL is checked here instead.
_MAX_TIMEOUT = 1_000_000.0

# A password holding one of these characters unencoded splits the URL in the
# wrong place (urllib ends the authority at the first / ? #): the rest of the
# password then reads as a port, a path or a query.
_ENCODE_HINT = (
    "if the user or password holds # / ? @ or :, percent-encode them "
    "(%23 %2F %3F %40 %3A) or set the password in CASBACKUP_CLICKHOUSE_PASSWORD"
)


def _invalid(what: str, scheme: str = "") -> ConfigError:
    """A URL error that names what is wrong but never echoes the URL: it may hold a password.

    A chdb URL holds no user or password, so the advice to encode one is left out.
    """
    if scheme == "chdb":
        return ConfigError(detail=f"invalid chdb URL: {what} (chdb:///path?config=/file.xml)")
    return ConfigError(detail=f"invalid ClickHouse URL: {what}; {_ENCODE_HINT}")


def _query(text: str, scheme: str) -> dict[str, str]:
    """``key=value&...``; a field without ``=`` is refused without being echoed (it may be a password's tail)."""
    query: dict[str, str] = {}
    for field_ in text.split("&"):
        if not field_:
            continue
        key, equals, value = field_.partition("=")
        if not equals:
            raise _invalid("a query parameter has no value", scheme)
        query[unquote(key)] = unquote(value)
    return query


def _timeout(query: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(query.get(name, default))
    except ValueError:
        value = math.nan
    if not 0 < value <= _MAX_TIMEOUT:  # also false for NaN
        raise ConfigError(
            detail=f"invalid ClickHouse URL: {name} must be a number of seconds "
            f"above 0 and at most {_MAX_TIMEOUT:.0f}"
        )
    return value


def parse_url(url: str) -> ConnectionSpec:
    """Read a ClickHouse URL; every error names the problem, never any part of the user info."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" of an IPv6 host
        raise _invalid("it does not parse") from None
    if "#" in url:
        raise _invalid("'#' has no meaning in it", parts.scheme)
    if parts.scheme != "chdb" and "@" in parts.path + parts.query:
        raise _invalid("'@' after the host")
    query = _query(parts.query, parts.scheme)
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
    unknown = set(query) - {"secure", "connect_timeout", "send_receive_timeout"}
    if unknown:
        raise ConfigError(
            detail=f"unknown ClickHouse URL parameter(s): {', '.join(sorted(unknown))}"
        )
    secure_text = query.get("secure", "").lower()
    if secure_text not in _TRUE | _FALSE:
        raise ConfigError(detail="invalid ClickHouse URL: secure must be true or false")
    secure = parts.scheme == "clickhouses" or secure_text in _TRUE
    try:
        port = parts.port
    except ValueError:  # urllib's message quotes the text after the last ':', maybe a password
        raise _invalid("the port is not a number from 1 to 65535") from None
    if port == 0:
        raise _invalid("the port is not a number from 1 to 65535")
    return ConnectionSpec(
        scheme="native",
        host=parts.hostname or "127.0.0.1",
        port=port or (9440 if secure else 9000),
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        secure=secure,
        connect_timeout=_timeout(query, "connect_timeout", 10.0),
        send_receive_timeout=_timeout(query, "send_receive_timeout", 3600.0),
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
