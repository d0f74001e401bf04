"""Fixtures shared by every test package."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from casbackup.catalog import Catalog
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from tests.engines import ChdbEngine, Engine, ServerEngine, start_chdb, start_server


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"))


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


@pytest.fixture
def catalog(repo: Repository, catalog_url: str) -> Iterator[Catalog]:
    with Catalog.open(catalog_url, repo.id) as opened:
        yield opened


# --- ClickHouse engines ---------------------------------------------------------------


@pytest.fixture(scope="session")
def server_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEngine]:
    yield from start_server(tmp_path_factory.mktemp("clickhouse-server"))


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbEngine]:
    yield from start_chdb(tmp_path_factory.mktemp("chdb"))


@pytest.fixture(params=["server", "chdb"])
def engine(request: pytest.FixtureRequest) -> Engine:
    fixture = "server_engine" if request.param == "server" else "chdb_engine"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


_counter = itertools.count()


@pytest.fixture
def dbname(request: pytest.FixtureRequest, engine: Engine) -> Iterator[str]:
    """A database name unique to this test; every database starting with it is dropped afterwards."""
    base = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40]
    name = f"t{next(_counter)}_{base}"
    yield name
    for (db,) in engine.sql("SELECT name FROM system.databases"):
        if db.startswith(name):
            engine.sql(f"DROP DATABASE IF EXISTS `{db}`")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        import json

        return json.loads(self.stdout)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the casbackup CLI in-process: cli(engine_or_None, *args, repo=...)."""
    from casbackup.cli.main import run

    default_repo = tmp_path / "repo"

    def invoke(engine: Engine | None, *args: str, repo: Path | None = None) -> CliResult:
        capsys.readouterr()
        argv = ["--repo", str(repo or default_repo)]
        if engine is not None:
            argv += ["--clickhouse", engine.url]
        code = run([*argv, *args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke


# --- S3 (moto's standalone server on loopback, see tests/s3server.py) -------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.s3server import start_s3_server

    yield from start_s3_server(tmp_path_factory.mktemp("s3-server"))


@pytest.fixture
def s3_bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the test server, with boto3's environment set to test credentials."""
    from tests.s3server import use_test_credentials

    use_test_credentials(monkeypatch)
    return str(s3_server.new_bucket())
