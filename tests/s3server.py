"""A real S3-compatible server for the tests: moto's standalone server on loopback.

moto (``moto[server]``, in the test extras) runs as its own process, so the
store talks to it over real HTTP exactly as to AWS: signing, retries, ranged
GETs, multipart uploads and conditional PUTs all happen on the wire. Missing
moto skips the S3 tests, unless CASBACKUP_REQUIRE_ENGINES=1 (CI).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from casbackup.store.s3 import S3Options, S3Store
from tests.engines import free_port, require

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key-do-not-print"
REGION = "us-east-1"

_bucket_numbers = itertools.count()


@dataclass
class S3Server:
    root: Path
    port: int = field(default_factory=free_port)
    # With auth on, moto checks signatures against its IAM users; the first
    # ``free_actions`` requests are let through so a test can create a user.
    auth: bool = False
    free_actions: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.free_actions)
        log = open(self.root / f"moto-{self.port}.log", "wb")  # noqa: SIM115 -- lives as long as the server
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.motoserver", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited: {(self.root / f'moto-{self.port}.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError("moto server did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, endpoint: str | None = None, **credentials: str) -> Any:
        """A plain boto3 client for setting up and inspecting buckets (not the code under test)."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=credentials.get("access_key", ACCESS_KEY),
            aws_secret_access_key=credentials.get("secret_key", SECRET_KEY),
            region_name=REGION,
        ).client("s3", endpoint_url=endpoint or self.endpoint)

    def new_bucket(self) -> str:
        name = f"casbackup-test-{os.getpid()}-{next(_bucket_numbers)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object in the bucket under a prefix, with its size, listed directly."""
        found: dict[str, int] = {}
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            for item in page.get("Contents", ()):
                found[item["Key"]] = item["Size"]
        return found

    def store(
        self, bucket: str, prefix: str = "", *, endpoint: str | None = None, **options: Any
    ) -> S3Store:
        """The store under test, with explicit test credentials and small, fast settings."""
        settings: dict[str, Any] = {
            "endpoint_url": endpoint or self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "max_attempts": 10,
            "concurrency": 4,
        }
        settings.update(options)
        return S3Store(bucket, prefix, S3Options(**settings))


def start_s3_server(root: Path, *, auth: bool = False, free_actions: int = 0) -> Iterator[S3Server]:
    try:
        import flask  # noqa: F401 -- moto's server needs its [server] extra
        import moto.server  # noqa: F401
    except ImportError:
        require("moto's standalone server is not installed (pip install 'moto[server]')")
    server = S3Server(root, auth=auth, free_actions=free_actions)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def use_test_credentials(monkeypatch: pytest.MonkeyPatch, endpoint: str | None = None) -> None:
    """boto3's standard environment, pointed at the test server and nowhere else.

    No shared config or credentials files and no instance metadata lookups,
    so nothing on the host changes what the tests do, and no request leaves
    loopback.
    """
    for variable in list(os.environ):
        if variable.startswith("AWS_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/casbackup-test/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/casbackup-test/credentials")
    if endpoint is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
