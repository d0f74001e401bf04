"""The native-protocol adapter (clickhouse-driver): the production path.

The only module that imports clickhouse_driver. Server errors arrive with a
stack trace appended; operators get the first line, with the error code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# clickhouse-driver fills a table of every date from 1900 to 2299 when it is
# imported (~120 ms, on every run of the CLI) unless this variable is set; any
# value that is not "start:end" makes the table fill itself on first use
# instead, with the same values. The spelling is the driver's.
os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", "on-demand")

from clickhouse_driver import Client
from clickhouse_driver import errors as driver_errors

from casbackup.clickhouse.client import ConnectionSpec, Row, first_line
from casbackup.errors import ClickHouseAuthFailed, ClickHouseError, ClickHouseUnavailable

# Server error codes that mean "who you are", not "what you asked".
_AUTH_CODES = {
    192,
    193,
    194,
    195,
    516,
}  # UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED, AUTHENTICATION_FAILED


class NativeClient:
    def __init__(self, spec: ConnectionSpec) -> None:
        self.spec = spec
        self._client = Client(
            host=spec.host,
            port=spec.port,
            user=spec.user,
            password=spec.password,
            secure=spec.secure,
            connect_timeout=spec.connect_timeout,
            # The greeting too is bounded by connect_timeout: a port that
            # accepts and never answers (the HTTP port, a proxy) would hold
            # the first read for send_receive_timeout, an hour by default.
            send_receive_timeout=spec.connect_timeout,
            sync_request_timeout=spec.connect_timeout,
            settings={"use_client_time_zone": False},
        )
        self._greeted = False
        self.query("SELECT 1")  # fail here, with a clear error, if we cannot reach or log in
        self._greeted = True
        # Connected: queries may wait long for their first packet (FREEZE of a big table).
        connection = self._client.connection
        connection.send_receive_timeout = spec.send_receive_timeout
        if connection.socket is not None:
            connection.socket.settimeout(spec.send_receive_timeout)

    def describe(self) -> str:
        return self.spec.describe()

    def clone(self) -> NativeClient:
        return NativeClient(self.spec)

    def query(self, sql: str) -> list[Row]:
        rows, columns = self._run(sql, with_column_types=True)
        names = [name for name, _type in columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        self._run(sql, settings=dict(settings) if settings else None)

    def close(self) -> None:
        self._client.disconnect()

    def _run(self, sql: str, **kwargs: Any) -> Any:
        try:
            return self._client.execute(sql, **kwargs)
        except driver_errors.ServerException as exc:
            if exc.code in _AUTH_CODES:
                raise ClickHouseAuthFailed(target=self.describe(), user=self.spec.user) from None
            raise ClickHouseError(detail=first_line(exc.message)) from None
        except driver_errors.SocketTimeoutError:
            if self._greeted:
                detail = (
                    f"no answer within send_receive_timeout ({self.spec.send_receive_timeout:g} s)"
                )
            else:
                # The driver raises this for a TCP connect that timed out (a
                # firewall dropping SYNs) as for a greeting that never came.
                detail = (
                    "no connection or no greeting within connect_timeout "
                    f"({self.spec.connect_timeout:g} s); is the host reachable, and is this "
                    "ClickHouse's native protocol port (9000 by default, 8123 is HTTP)?"
                )
            raise ClickHouseUnavailable(target=self.describe(), detail=detail) from None
        except (
            OSError,
            driver_errors.NetworkError,
            EOFError,
        ) as exc:
            raise ClickHouseUnavailable(
                target=self.describe(), detail=first_line(str(exc))
            ) from None
        except driver_errors.Error as exc:
            raise ClickHouseError(detail=first_line(str(exc))) from None
        except BaseException:
            # A signal (casbackup.interrupts) taken while the driver waits for
            # the answer: the driver disconnects on Exception and
            # KeyboardInterrupt only, and would refuse the cleanup's next query
            # ('Simultaneous queries on single connection detected').
            self._client.disconnect()
            raise
