"""A fault-injecting HTTP proxy in front of the test S3 server.

Sits on a loopback port of its own and forwards each request to the real
server (moto), except that a configurable share of requests meets a fault
instead, the kinds a real object store produces:

- ``500``: 500 InternalError (S3 XML error body), request not applied;
- ``503``: 503 SlowDown, request not applied;
- ``drop``: the connection closes before the request reaches the server;
- ``drop_after``: the server applies the request, but the connection closes
  before the response arrives (so a retried create meets its own object);
- ``truncate``: the response is forwarded with its real Content-Length but
  only half its body, then the connection closes.

One more kind is not in ``KINDS`` (a plan names it): ``ignore_range``, the
request is forwarded without its Range header, so the whole object comes
back with 200, as from a server or cache that does not do ranges (HTTP
allows that).

``fail_after_puts`` turns the proxy into a permanently failing store (500 to
everything) once that many object PUTs went through, which is how a backup
gets interrupted half-way for real. Every forwarded request is logged, so a
test can count what was uploaded.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("500", "503", "drop", "drop_after", "truncate")

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Forwarded:
    method: str
    path: str
    status: int


@dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    permanent: bool = False  # answer 500 to everything
    fail_after_puts: int | None = None  # then become permanent
    puts_marker: str = ""  # count only PUTs whose path contains this
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")
    path_marker: str = ""  # only requests whose path contains this


@dataclass
class FaultLog:
    forwarded: list[Forwarded] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    requests: int = 0

    def object_puts(self, marker: str = "") -> list[str]:
        """Paths of successful single PUTs and completed multipart uploads containing ``marker``."""
        done = []
        for f in self.forwarded:
            if f.status != 200 or marker not in f.path:
                continue
            path, _, query = f.path.partition("?")
            if (f.method == "PUT" and "partNumber=" not in query) or (
                f.method == "POST" and "uploadId=" in query
            ):
                done.append(path)
        return done


class FaultProxy:
    def __init__(self, upstream_port: int, plan: FaultPlan | None = None) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan()
        self.log = FaultLog()
        self._lock = threading.Lock()
        self._rng = random.Random(self.plan.seed)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)

    def choose(self, method: str, path: str) -> str | None:
        """The fault for the next request, or None to forward it untouched."""
        with self._lock:
            self.log.requests += 1
            plan = self.plan
            if plan.permanent:
                kind: str | None = "500"
            elif (
                method in plan.methods
                and plan.path_marker in path
                and self._rng.random() < plan.rate
            ):
                # Kinds take turns, so a few dozen faults include every kind.
                kind = plan.kinds[sum(self.log.faults.values()) % len(plan.kinds)]
            else:
                kind = None
            if kind is not None:
                self.log.faults[kind] += 1
            return kind

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.forwarded.append(Forwarded(method, path, status))
            plan = self.plan
            if (
                plan.fail_after_puts is not None
                and method == "PUT"
                and status == 200
                and len(self.log.object_puts(plan.puts_marker)) >= plan.fail_after_puts
            ):
                self.plan = FaultPlan(permanent=True)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue handled for us
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._proxy()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _proxy(self) -> None:
            body = self._read_body()
            kind = proxy.choose(self.command, self.path)
            if kind in _ERRORS:
                self._send_error(*_ERRORS[kind])
                return
            if kind == "drop":
                self._drop()
                return
            try:
                status, reason, headers, payload = self._forward(body, kind == "ignore_range")
            except (OSError, http.client.HTTPException):
                self._drop()
                return
            proxy.record(self.command, self.path, status)
            if kind == "drop_after" or (kind == "truncate" and len(payload) < 2):
                self._drop()
                return
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if kind == "truncate":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(payload)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(
            self, body: bytes, ignore_range: bool = False
        ) -> tuple[int, str, list[tuple[str, str]], bytes]:
            for attempt in range(2):  # a kept-alive upstream connection may have gone stale
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(
                        "127.0.0.1", proxy.upstream_port, timeout=120
                    )
                try:
                    self.upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        lower = name.lower()
                        if lower in _HOP_BY_HOP or lower in ("expect", "content-length"):
                            continue
                        if ignore_range and lower == "range":
                            continue
                        self.upstream.putheader(name, value)
                    self.upstream.putheader("Content-Length", str(len(body)))
                    self.upstream.endheaders(body)
                    response = self.upstream.getresponse()
                    payload = response.read()
                    return response.status, response.reason, response.getheaders(), payload
                except (OSError, http.client.HTTPException):
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _send_error(self, status: int, code: str, message: str) -> None:
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                "<RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self) -> None:
            super().finish()
            if self.upstream is not None:
                self.upstream.close()

    return Handler
