"""A private ClickHouse server (the Debian 18.16 package) in a directory, on loopback ports.

Shared by the tests (tests/engines.py) and the churn benchmark
(tools/bench_churn.py), so that both run the server the same way: its own
data, tmp and log directories, its own users file, nothing of the system's
instance touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

SERVER_BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_server(
    root: Path,
    *,
    tcp_port: int,
    http_port: int,
    users_xml: str,
    ready: Callable[[], object],
    timeout_s: float = 60,
) -> subprocess.Popen[bytes]:
    """Write the config under ``root``, start the server, and return once ``ready()`` succeeds."""
    for sub in ("data", "tmp", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "users.xml").write_text(users_xml)
    (root / "config.xml").write_text(
        f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/log/server.log</log><errorlog>{root}/log/error.log</errorlog></logger>
  <tcp_port>{tcp_port}</tcp_port><http_port>{http_port}</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
"""
    )
    with open(root / "log" / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [SERVER_BINARY, f"--config-file={root / 'config.xml'}"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=root,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (root / "log" / "stderr.log").read_text()[-2000:]
            raise RuntimeError(f"clickhouse-server exited: {log}")
        try:
            ready()
            return process
        except Exception:
            time.sleep(0.3)
    stop_server(process)
    raise RuntimeError(f"clickhouse-server did not answer within {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen[bytes] | None, timeout_s: float = 60) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
