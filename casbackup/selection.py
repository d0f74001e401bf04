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


def partition_selected(
    database: str, table: str, partition_id: str, value: str, specs: Sequence[str]
) -> bool:
    """Whether a part's partition is chosen by ``--partitions`` (no specs: every partition).

    A spec is ``P`` (any table) or ``db.table:P`` (glob on the table); ``P``
    is a partition id (``202401``) or a partition value as ClickHouse prints
    it, with or without its quotes (``'eu'``, ``eu``, ``('eu', 3)``).
    """
    if not specs:
        return True
    for spec in specs:
        # The first colon ends a table scope: partition values may hold colons (times).
        scope, sep, wanted = spec.partition(":")
        if not sep or "." not in scope or scope.startswith(("'", "(")):
            scope, sep, wanted = "", "", spec
        if sep and not fnmatchcase(f"{database}.{table}", scope):
            continue
        if wanted in (partition_id, value) or (
            value.startswith("'") and value.strip("'") == wanted
        ):
            return True
    return False


def split_specs(values: Iterable[str]) -> tuple[str, ...]:
    """``--partitions`` values split at commas that are not inside quotes or parentheses.

    ``202401,202402`` is two partitions; ``('eu', 3)`` is one value.
    """
    specs: list[str] = []
    for value in values:
        depth, quote, escaped = 0, "", False
        current: list[str] = []
        for char in value:
            if escaped:
                escaped = False
            elif quote:
                escaped = char == "\\"
                quote = "" if char == quote else quote
            elif char in "'\"`":
                quote = char
            elif char == "(":
                depth += 1
            elif char == ")":
                depth = max(0, depth - 1)
            elif char == "," and depth == 0:
                specs.append("".join(current).strip())
                current = []
                continue
            current.append(char)
        specs.append("".join(current).strip())
    return tuple(s for s in specs if s)
