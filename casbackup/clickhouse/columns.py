"""A part's ``columns.txt``, and whether its column types are the ones a table has.

ClickHouse writes the columns a part holds, with their types, into each
part's ``columns.txt`` (``NamesAndTypesList::writeText``), the same on
18.16 and on 26.x::

    columns format version: 1
    2 columns:
    `id` UInt64
    `s` String

Names are back-quoted with backslash escapes (``\\``` ``\\\\`` ``\\n``
``\\t``...); the type is the rest of the line, as ``IDataType::getName``
prints it (quotes inside an Enum are escaped, so it holds no newline).

``ATTACH PART`` does not compare those types with the table's: a part of
``UInt64`` in a ``String`` column attaches, and 18.16 then reads the stored
bytes as strings (garbage), while 26.x converts them. Restore compares them
first (``type_conflicts``). The file comes from repository data, so it is
untrusted: anything that is not this format is a ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from casbackup.clickhouse.sql import Kind, Token, tokenize

HEADER = "columns format version: 1"
_COUNT = re.compile(r"([0-9]{1,9}) columns:")
# A back-quoted name: closing quote unless escaped by a backslash or doubled.
_NAME = re.compile(r"`(?:[^`\\]|\\.|``)*`", re.DOTALL)


def parse_columns_txt(data: bytes) -> list[tuple[str, str]]:
    """(name, type) of every column a ``columns.txt`` lists, in its order.

    Names that are not UTF-8 are kept byte for byte (surrogate escapes): they
    then match no column of the table, as they could not in ClickHouse either.
    """
    text = data.decode("utf-8", errors="surrogateescape")
    header, _, rest = text.partition("\n")
    if header != HEADER:
        raise ValueError(f"first line is not {HEADER!r}")
    count_line, _, rest = rest.partition("\n")
    found = _COUNT.fullmatch(count_line)
    if found is None:
        raise ValueError("second line is not '<n> columns:'")
    columns: list[tuple[str, str]] = []
    position = 0
    for _ in range(int(found.group(1))):
        name = _NAME.match(rest, position)
        if name is None:
            raise ValueError(f"column {len(columns) + 1}: no back-quoted name")
        end = rest.find("\n", name.end())
        if end < 0 or rest[name.end() : name.end() + 1] != " " or end == name.end() + 1:
            raise ValueError(f"column {len(columns) + 1}: no type after the name")
        identifier = Token(Kind.QUOTED, name.group()).identifier
        assert identifier is not None  # a QUOTED token always names one
        columns.append((identifier, rest[name.end() + 1 : end]))
        position = end + 1
    if position != len(rest):
        raise ValueError(f"more than the {len(columns)} columns it announces")
    if len({name for name, _ in columns}) != len(columns):
        raise ValueError("a column is listed twice")
    return columns


def normalise_type(type_name: str) -> str:
    """A type name with the spacing ClickHouse releases may print differently taken out.

    ``Decimal(18,2)`` and ``Decimal(18, 2)``, ``Enum8('a'=1)`` and
    ``Enum8('a' = 1)`` are one type: spaces next to punctuation go, other
    runs become one space; quoted text (Enum names, named tuple elements) is
    left exactly as it is. Checked on both test engines: 18.16's
    ``columns.txt`` and 26.x's ``system.columns`` spell every type of
    tests/clickhouse/schema.py, and DateTime('UTC'), Enum16, Nullable(Decimal),
    FixedString, UUID, Float64 and Nested columns, identically, so spacing
    is all this takes out; aliases (Decimal32(3)) are already resolved in both.
    """
    tokens = list(tokenize(type_name.strip()))
    out: list[str] = []
    for index, token in enumerate(tokens):
        if token.kind is not Kind.SPACE or not token.text.isspace():  # (a comment: no type has one)
            out.append(token.text)
            continue
        neighbours = tokens[index - 1 : index] + tokens[index + 1 : index + 2]
        if not any(t.kind is Kind.PUNCT for t in neighbours):
            out.append(" ")
    return "".join(out)


@dataclass(frozen=True)
class TypeConflict:
    """A column the parts and the table both have, with different types."""

    column: str
    backup_type: str
    table_type: str


def type_conflicts(
    part_columns: Iterable[tuple[str, str]], table_columns: Mapping[str, str]
) -> list[TypeConflict]:
    """Columns of the parts whose type differs from the table's column of that name.

    A column on one side only is no conflict: ATTACH leaves a column the
    table lacks out and fills one the parts lack with its default, as after
    ``ADD COLUMN`` (docs/operations.md).
    """
    return [
        TypeConflict(name, type_name, table_columns[name])
        for name, type_name in part_columns
        if name in table_columns
        and normalise_type(type_name) != normalise_type(table_columns[name])
    ]
