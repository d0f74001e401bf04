"""A part's columns.txt read back, and type names compared as ClickHouse spells them."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.clickhouse.columns import (
    TypeConflict,
    normalise_type,
    parse_columns_txt,
    reads_as,
    type_conflicts,
)

# What writeBackQuotedString escapes (WriteHelpers.h, writeAnyEscapedString).
_WRITER_ESCAPES = {
    "\\": "\\\\",
    "`": "\\`",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
}


def columns_txt(columns: list[tuple[str, str]]) -> bytes:
    """``NamesAndTypesList::writeText``, as ClickHouse writes a part's columns.txt."""
    lines = ["columns format version: 1", f"{len(columns)} columns:"]
    for name, type_name in columns:
        quoted = "".join(_WRITER_ESCAPES.get(ch, ch) for ch in name)
        lines.append(f"`{quoted}` {type_name}")
    return ("\n".join(lines) + "\n").encode()


# Both engines wrote exactly this for these columns (18.16 and 26.x alike).
SEEN = (
    b"columns format version: 1\n5 columns:\n`a\\`b` UInt8\n`c\\\\d` UInt8\n`e\\nf` UInt8\n"
    b"`\xc3\xbc g` UInt8\n`h\\tq` Enum8('x\\ny' = 1, 'q\\'r' = 2, 'a\\\\b' = 3)\n"
)


def test_reads_what_clickhouse_wrote() -> None:
    assert parse_columns_txt(SEEN) == [
        ("a`b", "UInt8"),
        ("c\\d", "UInt8"),
        ("e\nf", "UInt8"),
        ("ü g", "UInt8"),
        ("h\tq", "Enum8('x\\ny' = 1, 'q\\'r' = 2, 'a\\\\b' = 3)"),
    ]


def test_reads_no_columns() -> None:
    assert parse_columns_txt(b"columns format version: 1\n0 columns:\n") == []


# Column names: any text; types: one line, not empty (getName never prints a newline).
_names = st.text(st.characters(codec="utf-8"), max_size=20)
_types = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=30)


@given(st.lists(st.tuples(_names, _types), max_size=8, unique_by=lambda c: c[0]))
def test_round_trips_what_clickhouse_writes(columns: list[tuple[str, str]]) -> None:
    assert parse_columns_txt(columns_txt(columns)) == columns


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):  # never another exception: the file is untrusted
        parse_columns_txt(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "first line"),
        (b"columns format version: 2\n1 columns:\n`a` UInt8\n", "first line"),
        (b"columns format version: 1\nmany columns:\n", "second line"),
        (b"columns format version: 1\n2 columns:\n`a` UInt8\n", "column 2: no back-quoted"),
        (b"columns format version: 1\n1 columns:\n`a UInt8\n", "column 1: no back-quoted"),
        (b"columns format version: 1\n1 columns:\n`a` UInt8", "column 1: no type"),
        (b"columns format version: 1\n1 columns:\n`a`\n", "column 1: no type"),
        (b"columns format version: 1\n1 columns:\n`a` \n", "column 1: no type"),
        (b"columns format version: 1\n1 columns:\n`a` UInt8\n`b` UInt8\n", "more than the 1"),
        (b"columns format version: 1\n2 columns:\n`a` UInt8\n`a` String\n", "listed twice"),
        (b"columns format version: 1\n999999999 columns:\n`a` UInt8\n", "column 2"),
    ],
)
def test_refuses_what_clickhouse_does_not_write(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_columns_txt(data)


def test_names_that_are_not_utf8_are_kept_apart() -> None:
    [(name, _)] = parse_columns_txt(b"columns format version: 1\n1 columns:\n`\xff` UInt8\n")
    assert name != "\ufffd" and name.encode("utf-8", "surrogateescape") == b"\xff"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Decimal(18, 2)", "Decimal(18,2)"),
        ("Nullable( Decimal(9,3) )", "Nullable(Decimal(9, 3))"),
        ("Enum8('a'=1,'b'=2)", "Enum8('a' = 1, 'b' = 2)"),
        ("Tuple(a  UInt8,\tb String)", "Tuple(a UInt8, b String)"),
        (" UInt64 ", "UInt64"),
    ],
)
def test_spacing_is_not_a_different_type(one: str, other: str) -> None:
    assert normalise_type(one) == normalise_type(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("UInt64", "String"),
        ("Decimal(18, 2)", "Decimal(18, 3)"),
        ("LowCardinality(String)", "String"),
        ("Enum8('a b' = 1)", "Enum8('a  b' = 1)"),  # inside quotes, spacing is the value
        ("Enum8('a,b' = 1)", "Enum8('a, b' = 1)"),
        ("Tuple(a UInt8)", "Tuple(aUInt8)"),
    ],
)
def test_other_types_stay_apart(one: str, other: str) -> None:
    assert normalise_type(one) != normalise_type(other)


@given(_types)
def test_normalising_is_idempotent(type_name: str) -> None:
    once = normalise_type(type_name)
    assert normalise_type(once) == once


def test_only_columns_on_both_sides_can_conflict() -> None:
    parts = [("id", "UInt64"), ("s", "String"), ("gone", "UInt8"), ("d", "Decimal(18,2)")]
    table = {"id": "String", "s": "String", "added": "UInt8", "d": "Decimal(18, 2)"}
    assert type_conflicts(parts, table) == [TypeConflict("id", "UInt64", "String")]


@pytest.mark.parametrize(
    ("part", "table"),
    [
        ("Enum8('a' = 1)", "Enum8('a' = 1, 'b' = 2)"),  # ALTER added a value: parts not rewritten
        ("Enum16('a,b' = -1)", "Enum16('c' = 2, 'a,b' = -1)"),
        ("DateTime", "DateTime('UTC')"),
        ("DateTime('UTC')", "DateTime('Asia/Tokyo')"),
        ("Array(Nullable(Enum8('x' = 1)))", "Array(Nullable(Enum8('x' = 1, 'y' = 2)))"),
        ("Enum8('a' = 1)", "Int8"),
        ("DateTime('UTC')", "UInt32"),
        ("UInt16", "Date"),
        # 18.16's name of a state type, and 26.x's (its default version) for the same text
        (
            "AggregateFunction(sumMap, Array(UInt8), Array(UInt64))",
            "AggregateFunction(1, sumMap, Array(UInt8), Array(UInt64))",
        ),
        (
            "AggregateFunction(quantiles(0.5, 0.9), UInt64)",
            "AggregateFunction(2, quantiles(0.5,0.9), UInt64)",
        ),
    ],
)
def test_what_an_alter_leaves_in_parts_reads_as_the_table_type(part: str, table: str) -> None:
    assert reads_as(part, table)
    assert type_conflicts([("c", part)], {"c": table}) == []


@pytest.mark.parametrize(
    ("part", "table"),
    [
        ("Enum8('a' = 1, 'b' = 2)", "Enum8('a' = 1)"),  # a value the table cannot name
        ("Enum8('a' = 1)", "Enum8('a' = 2)"),
        ("Enum8('a,b' = 1)", "Enum8('a' = 1, 'b' = 1)"),
        ("Enum8('a' = 1)", "Enum16('a' = 1)"),  # other width
        ("Int8", "Enum8('a' = 1)"),
        ("DateTime", "DateTime64(3)"),
        ("UInt32", "Nullable(UInt32)"),  # a null map the part does not have
        ("Array(UInt8)", "Array(Int16)"),
        ("Tuple(a DateTime)", "Tuple(a UInt32)"),
        ("Array(UInt8)(x)", "Array(UInt8)"),
        ("AggregateFunction(uniq, UInt64)", "AggregateFunction(1, uniqExact, UInt64)"),
        ("AggregateFunction(1, sumMap, Array(UInt8))", "AggregateFunction(sumMap, Array(UInt8))"),
        ("AggregateFunction(uniq, UInt64)", "AggregateFunction"),
    ],
)
def test_other_bytes_stay_a_conflict(part: str, table: str) -> None:
    assert not reads_as(part, table)


@given(st.text(max_size=60), st.text(max_size=60))
def test_reads_as_takes_any_text(part: str, table: str) -> None:
    assert reads_as(part, table) in (True, False)


_HOSTILE = """
import resource, sys
from casbackup.clickhouse.columns import parse_columns_txt, type_conflicts

resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
size = 16 * 1024 * 1024
for name, type_name in [("a" * size, "UInt8"), ("id", "x" * size), ("id", "(" * size)]:
    data = f"columns format version: 1\\n1 columns:\\n`{name}` {type_name}\\n".encode()
    [(parsed_name, parsed_type)] = parse_columns_txt(data)
    assert len(parsed_name) == len(name) and len(parsed_type) == len(type_name)
    assert len(type_conflicts([(parsed_name, parsed_type)], {"id": "UInt64", "a": "UInt8"})) == (
        parsed_name == "id"
    )
"""


def test_a_hostile_columns_txt_takes_memory_in_proportion_to_its_size() -> None:
    """16 MiB names or types (the cap is 64 MiB) took 2 GB each: sre's stack for ``(a|b)*``
    groups and a Token per character. Now within 512 MiB of address space, all of them."""
    done = subprocess.run(
        [sys.executable, "-c", _HOSTILE, str(512 * 1024 * 1024)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_long_enum_still_reads_as_the_int_it_was_altered_to() -> None:
    """Enum8 → Int8 is metadata-only: the part's type may be any length more than the table's."""
    values = ", ".join(f"'value number {n} of a long enum' = {n}" for n in range(-128, 128))
    assert reads_as(f"Enum8({values})", "Int8")
    assert reads_as(f"Array(Enum8({values}))", "Array(Int8)")
    assert reads_as(f"Enum16({values})", "Nullable(Int16)") is False  # a null map it lacks


def test_a_part_type_far_longer_than_the_table_type_is_not_tokenized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile columns.txt's type of megabytes, with spaces: 8 MiB took 29 s to normalise."""
    import casbackup.clickhouse.columns as columns

    tokenized: list[int] = []
    real = columns.tokenize

    def counting(text: str) -> object:
        tokenized.append(len(text))
        return real(text)

    monkeypatch.setattr(columns, "tokenize", counting)
    hostile = "Decimal(18, 2" + ", 2" * 1_000_000 + ")"
    assert not reads_as(hostile, "Decimal(18,2)")
    assert type_conflicts([("d", hostile)], {"d": "Decimal(18,2)"}) == [
        TypeConflict("d", hostile, "Decimal(18,2)")
    ]
    assert tokenized == []
    assert reads_as("Decimal(18, 2)", "Decimal(18,2)")  # spacing alone still reads as it
    assert tokenized
