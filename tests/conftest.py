"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.catalog import Catalog
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore


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
