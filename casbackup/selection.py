"""Which tables a command acts on: ``database.table`` glob patterns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar

from casbackup.clickhouse.sql import Kind, quote_string, tokenize, unquote_string


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


def unmatched(items: Iterable[Named], include: Sequence[str]) -> list[str]:
    """Include patterns that match none of ``items`` (before any exclusion), in their order.

    Only when none matches is it an error (``NothingSelected``); one of
    several that matches nothing (``--tables 'shop.users,shop.evnts'``, or
    the same in ``[backup] tables``) is most likely a typo, and was ignored
    without a word: a table the operator named, never backed up.
    """
    names = [f"{t.database}.{t.name}" for t in items]
    return [p for p in include if not any(fnmatchcase(name, p) for name in names)]


def unmatched_warning(pattern: str, doing: str) -> str:
    return f"pattern {pattern!r} matches no table (a typo?); {doing}"


def partition_selected(
    database: str,
    table: str,
    partition_id: str,
    value: str,
    specs: Sequence[str],
    *,
    unnamed_whole: bool = False,
) -> bool:
    """Whether a part's partition is chosen by ``--partitions`` (no specs: every partition).

    A spec is ``P`` (any table) or ``db.table:P`` (glob on the table); ``P``
    is a partition id (``202401``) or a partition value as ClickHouse prints
    it, with or without its quotes (``'eu'``, ``eu``, ``('eu', 3)``).

    A table no spec applies to (only scoped specs, none naming it) is whole
    with ``unnamed_whole`` (``create``: ``--partitions shop.events:202401``
    limits that table, the others are backed up whole) and gets nothing
    without it (``restore``: restoring one table's partition must not roll
    the other tables back, least of all with ``--drop-existing``).
    """
    if any(spec_selects(spec, database, table, partition_id, value) for spec in specs):
        return True
    return not specs or (
        unnamed_whole and not any(spec_applies(spec, database, table) for spec in specs)
    )


def spec_applies(spec: str, database: str, table: str) -> bool:
    """Whether a ``--partitions`` spec limits this table (unscoped specs limit every table)."""
    scope, _ = _split_scope(spec)
    return scope is None or fnmatchcase(f"{database}.{table}", scope)


def spec_selects(spec: str, database: str, table: str, partition_id: str, value: str) -> bool:
    """Whether one spec chooses this table's partition."""
    _, wanted = _split_scope(spec)
    values = {partition_id, value}
    if value.startswith(("'", "(")):
        values.add(_canonical(value))
    return spec_applies(spec, database, table) and bool({wanted, _canonical(wanted)} & values)


def _canonical(value: str) -> str:
    """A partition value written as SQL, in the form system.parts prints it.

    Both engines print a single string or date key bare (``eu``,
    ``2024-01-01``) and a tuple without spaces (``('eu',3)``); an operator
    writes ``'eu'`` or ``('eu', 3)``. Spaces between tokens go and each string
    literal is written one way; a lone string literal loses its quotes.
    """
    tokens = [t for t in tokenize(value.strip()) if t.kind is not Kind.SPACE]
    literal = [t.kind is Kind.STRING and len(t.text) > 1 and t.text[-1] == "'" for t in tokens]
    if literal == [True]:
        return unquote_string(tokens[0].text)
    return "".join(
        quote_string(unquote_string(t.text)) if is_literal else t.text
        for t, is_literal in zip(tokens, literal, strict=True)
    )


def _split_scope(spec: str) -> tuple[str | None, str]:
    """(table glob or None, partition) of a spec."""
    # The first colon ends a table scope: partition values may hold colons (times).
    scope, sep, wanted = spec.partition(":")
    if not sep or "." not in scope or scope.startswith(("'", "(")):
        return None, spec
    return scope, wanted


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
