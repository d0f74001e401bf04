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

Types that differ are not always a conflict: an ALTER that changes no
stored byte (values added to an Enum, a DateTime's time zone) rewrites no
part on 26.x, whose parts then keep the old type in ``columns.txt`` while
the table has the new one (seen on chdb). Such parts read as the table's
type byte for byte, on 18.16 too (``reads_as``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from casbackup.clickhouse.sql import Kind, Token, tokenize

HEADER = "columns format version: 1"
_WHITESPACE = re.compile(r"\s")
_COUNT = re.compile(r"([0-9]{1,9}) columns:")
# A back-quoted name: closing quote unless escaped by a backslash or doubled. Possessive
# (``*+``) and by runs: sre kept ~120 bytes per character of a plain ``*`` group for
# backtracking it never needs (no two alternatives start alike), 4 GB for a 32 MiB name.
_NAME = re.compile(r"`(?:[^`\\]+|\\.|``)*+`", re.DOTALL)


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
        body = name.group()[1:-1]
        # Unescaped only if escaped: _unescape holds a list entry per character.
        identifier = (
            Token(Kind.QUOTED, name.group()).identifier if "\\" in body or "``" in body else body
        )
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
    text = type_name.strip()
    if _WHITESPACE.search(text) is None:
        return text  # nothing to take out: no tokens (a Token per character of "((((...")
    out: list[str] = []
    previous: Token | None = None
    spaced = False  # whitespace since ``previous``, written if neither side is punctuation
    for token in tokenize(text):
        if token.kind is Kind.SPACE and token.text.isspace():  # (a comment: no type has one)
            spaced = True
            continue
        if spaced and previous is not None and Kind.PUNCT not in (previous.kind, token.kind):
            out.append(" ")
        out.append(token.text)
        previous, spaced = token, False
    return "".join(out)


# (part's type, table's type) of the same bytes on disk: the conversions ClickHouse's ALTER
# makes without rewriting parts (MergeTreeData::isMetadataOnlyConversion), by type name.
_SAME_BYTES = {
    ("Enum8", "Int8"),
    ("Enum16", "Int16"),
    ("DateTime", "UInt32"),
    ("UInt32", "DateTime"),
    ("Date", "UInt16"),
    ("UInt16", "Date"),
}


def _split_type(type_name: str) -> tuple[str, list[str]] | None:
    """``Name(a, b)`` as (Name, [a, b]) with arguments normalised; None if it is not that shape.

    Token by token, keeping offsets only: the part's type is untrusted, up to
    ``MAX_COLUMNS_TXT`` long.
    """
    text = normalise_type(type_name)
    tokens = tokenize(text)
    head = next(tokens, None)
    if head is None or head.kind is not Kind.WORD:
        return None
    arguments: list[str] = []
    position = start = len(head.text)
    depth = 0
    for token in tokens:
        at, position = position, position + len(token.text)
        if token.kind is Kind.PUNCT and token.text == "(":
            depth += 1
            if depth == 1:
                if at != len(head.text):
                    return None  # Name(a)(b), or text before the parenthesis
                start = position
        elif token.kind is Kind.PUNCT and token.text in ",)" and depth == 1:
            arguments.append(text[start:at])
            start = position
            if token.text == ")":
                depth = 0
        elif token.kind is Kind.PUNCT and token.text == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            return None  # text after the closing parenthesis
    if depth != 0:
        return None
    return head.text, arguments


# How much longer than the table's type a part's may be and still read as it. Nothing
# that does is longer than twice as long, plus a constant: the part's type is the same
# type, spaced at most as widely (``'a' = 1, `` for ``'a'=1,``), an Enum with fewer
# values, a time zone the table's DateTime lacks; except an Enum, of any length, in
# parts of a column ALTERed to Int8 or Int16 (``_SAME_BYTES``), so not where the
# table's type names one of those.
_SPELLING_SLACK = 256
_NARROW_INT = re.compile(r"\bInt(?:8|16)\b")


def reads_as(part_type: str, table_type: str) -> bool:
    """Whether a part's column of ``part_type`` holds the bytes a ``table_type`` column reads.

    The same type, or one an ALTER turned into the table's without rewriting
    parts: an Enum whose every value the table's Enum (of the same width) has,
    a DateTime of another time zone, and ``_SAME_BYTES``; also inside Array
    and Nullable. And an aggregate function's state type without the version
    26.x adds to its name. Anything else is a conflict.
    """
    if part_type == table_type:
        return True
    far_longer = len(part_type) > 2 * len(table_type) + _SPELLING_SLACK
    if far_longer and not _NARROW_INT.search(table_type):
        # Untrusted and far longer: normalising it would tokenize megabytes in Python.
        return False
    if normalise_type(part_type) == normalise_type(table_type):
        return True
    part, table = _split_type(part_type), _split_type(table_type)
    if part is None or table is None:
        return False
    (part_name, part_args), (table_name, table_args) = part, table
    if part_name != table_name:
        return (part_name, table_name) in _SAME_BYTES
    if part_name in ("Array", "Nullable") and len(part_args) == len(table_args) == 1:
        return reads_as(part_args[0], table_args[0])
    if part_name in ("Enum8", "Enum16"):
        return set(part_args) <= set(table_args)
    if part_name == "AggregateFunction" and table_args[:1] != part_args[:1]:
        # 26.x names the state type of a versioned function with its version,
        # AggregateFunction(1, sumMap, ...), and gives a name without one (an
        # 18.16 part's, a CREATE's) the function's default version: the table
        # made from the backup's own definition has the same. (A table made
        # with another version explicitly is not told apart.)
        return len(table_args) > 1 and table_args[0].isdigit() and part_args == table_args[1:]
    return part_name == "DateTime" and len(part_args) <= 1 and len(table_args) <= 1


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
    ``ADD COLUMN`` (docs/operations.md). Nor is a type the table's reads
    byte for byte (``reads_as``).
    """
    return [
        TypeConflict(name, type_name, table_columns[name])
        for name, type_name in part_columns
        if name in table_columns and not reads_as(type_name, table_columns[name])
    ]
