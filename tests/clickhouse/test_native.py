"""The native-protocol adapter against the real 18.16 server."""

from __future__ import annotations

import signal
import threading

import pytest

from casbackup import interrupts
from casbackup.clickhouse.client import parse_url
from casbackup.clickhouse.native import NativeClient
from tests.engines import ServerEngine


def test_a_signal_taken_mid_query_leaves_the_client_usable_for_the_cleanup(
    server_engine: ServerEngine,
) -> None:
    """SIGTERM while the driver waits for a query's answer raises SignalReceived there;
    the cleanup on the way out (restore's SYSTEM START MERGES, verify's DROP of its
    scratch databases) queries the same client. The driver disconnects on Exception
    and KeyboardInterrupt only, so that first cleanup query was refused ('Simultaneous
    queries on single connection detected'): merges stayed stopped, a scratch database
    stayed, until `clean`."""
    client = NativeClient(parse_url(server_engine.url))
    main = threading.main_thread().ident
    assert main is not None
    undo = interrupts.install()
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(interrupts.SignalReceived):
            client.query("SELECT sleep(3)")
        assert client.query("SELECT 1 AS one") == [{"one": 1}]
    finally:
        timer.cancel()
        undo()
        client.close()
