"""Entry point of the test S3 server process: moto's standalone server, conditional writes made atomic.

``python -m tests.motoserver PORT`` runs what ``python -m moto.server -p PORT``
runs, with one difference. moto checks ``If-None-Match: *`` and then stores
the object in two unsynchronised steps, so of two racing conditional PUTs
both can win (seen in tests/store/test_s3.py's race test). AWS S3 decides
them atomically, and casbackup's locks require that (docs/operations.md). The
middleware below serialises conditional writes, giving the test server the
semantics casbackup documents as a requirement; everything else runs
concurrently, as in moto.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def atomic_conditional_writes(app: WsgiApp) -> WsgiApp:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        conditional = environ.get("REQUEST_METHOD") in ("PUT", "POST") and (
            "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
        )
        if not conditional:
            return app(environ, start_response)
        with lock:
            # moto computes the whole response inside the call; materialise it
            # under the lock all the same.
            return list(app(environ, start_response))

    return wrapped


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        atomic_conditional_writes(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
