"""Which tables a command acts on: ``database.table`` glob patterns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def database(self) -> str: ...

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


def matches(database: str, table: str, patterns: Sequence[str]) -> bool:
    full = f"{database}.{table}"
    return any(fnmatchcase(full, p) for p in patterns)


def select(items: Iterable[T], include: Sequence[str], exclude: Sequence[str] = ()) -> list[T]:
    return [
        t
        for t in items
        if matches(t.database, t.name, include) and not matches(t.database, t.name, exclude)
    ]
