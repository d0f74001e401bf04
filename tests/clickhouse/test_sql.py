"""Quoting and CREATE-statement surgery (pure; no server)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.clickhouse.sql import (
    _WORD,
    Token,
    bare_identifiers,
    create_target,
    materialized_view_target,
    qualified_references,
    quote_identifier,
    quote_string,
    rename_databases,
    set_create_target,
    statement_kind,
    tokenize,
)


@given(st.text())
def test_tokenize_is_lossless(sql: str) -> None:
    assert "".join(t.text for t in tokenize(sql)) == sql


_WORD_AS_WRITTEN_BEFORE = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")


@given(st.text(), st.integers(min_value=0, max_value=8))
def test_bare_identifiers_match_as_the_unicode_range_did(text: str, start: int) -> None:
    """The identifier pattern was rewritten for its compile time only (see _WORD)."""
    ours, theirs = _WORD.match(text, start), _WORD_AS_WRITTEN_BEFORE.match(text, start)
    assert (ours and ours.span()) == (theirs and theirs.span())


@given(st.text(min_size=1))
def test_quoted_identifier_roundtrips(name: str) -> None:
    tokens = [t for t in tokenize(quote_identifier(name))]
    assert len(tokens) == 1 and tokens[0].identifier == name


@given(st.text())
def test_quoted_string_is_one_token(value: str) -> None:
    tokens = list(tokenize(quote_string(value)))
    assert len(tokens) == 1 and tokens[0].text == quote_string(value)


def test_set_create_target_table() -> None:
    sql = "CREATE TABLE d.t (`id` UInt64) ENGINE = MergeTree ORDER BY id"
    assert (
        set_create_target(sql, "new db")
        == "CREATE TABLE `new db`.`t` (`id` UInt64) ENGINE = MergeTree ORDER BY id"
    )
    assert set_create_target(sql, "d", uuid="0000-1") == (
        "CREATE TABLE `d`.`t` UUID '0000-1' (`id` UInt64) ENGINE = MergeTree ORDER BY id"
    )


def test_set_create_target_replaces_existing_uuid_and_handles_quoting() -> None:
    sql = "CREATE TABLE `my db`.`tab``le` UUID 'aaaa' (x UInt8) ENGINE = Log"
    assert (
        set_create_target(sql, "other") == "CREATE TABLE `other`.`tab\\`le` (x UInt8) ENGINE = Log"
    )


def test_set_create_target_database() -> None:
    assert (
        set_create_target("CREATE DATABASE d\nENGINE = Atomic", "x y")
        == "CREATE DATABASE `x y`\nENGINE = Atomic"
    )
    assert (
        set_create_target("CREATE DATABASE d ENGINE = Ordinary", "d2")
        == "CREATE DATABASE `d2` ENGINE = Ordinary"
    )


def test_unqualified_18_16_statement() -> None:
    sql = "CREATE TABLE t ( id UInt64) ENGINE = MergeTree ORDER BY id"
    assert create_target(sql) == (None, "t")
    assert (
        set_create_target(sql, "d")
        == "CREATE TABLE `d`.`t` ( id UInt64) ENGINE = MergeTree ORDER BY id"
    )


def test_rename_databases_only_touches_qualified_references() -> None:
    sql = (
        "CREATE MATERIALIZED VIEW src.mv TO src.dst (`src` UInt8) AS "
        "SELECT src, 'src.x' AS s, t.src.a FROM src.t -- src.comment\nWHERE src = 1"
    )
    out = rename_databases(sql, {"src": "dst db"})
    assert out == (
        "CREATE MATERIALIZED VIEW `dst db`.mv TO `dst db`.dst (`src` UInt8) AS "
        "SELECT src, 'src.x' AS s, t.src.a FROM `dst db`.t -- src.comment\nWHERE src = 1"
    )


def test_rename_databases_leaves_columns_qualified_by_a_table_named_like_the_database() -> None:
    """`logs.id` is column id of table logs (in database logs): not a database reference."""
    sql = (
        "CREATE VIEW logs.v AS SELECT logs.id AS id, v, logs.logs.v AS w "
        "FROM logs.logs, logs.other AS o JOIN logs.x USING id WHERE logs.id IN logs.ids"
    )
    known = {("logs", "logs"), ("logs", "other"), ("logs", "v")}
    assert rename_databases(sql, {"logs": "r"}, known) == (
        "CREATE VIEW `r`.v AS SELECT logs.id AS id, v, `r`.logs.v AS w "
        "FROM `r`.logs, `r`.other AS o JOIN `r`.x USING id WHERE logs.id IN `r`.ids"
    )


def test_rename_databases_renames_what_is_not_provably_a_column() -> None:
    """Objects outside the backup, in positions no keyword marks: renamed, as before."""
    sql = (
        "CREATE VIEW shop.v AS SELECT joinGet(shop.jj, 'x', id) AS x "
        "FROM shop.orders, shop.notbacked"
    )
    assert rename_databases(sql, {"shop": "c"}, {("shop", "orders")}) == (
        "CREATE VIEW `c`.v AS SELECT joinGet(`c`.jj, 'x', id) AS x FROM `c`.orders, `c`.notbacked"
    )


def test_references() -> None:
    sql = "CREATE VIEW d.v AS SELECT a FROM `d`.`t 1` JOIN other.u USING a JOIN local ON 1"
    assert qualified_references(sql) == {("d", "v"), ("d", "t 1"), ("other", "u")}
    assert {"local", "a"} <= bare_identifiers(sql)
    assert "t 1" not in bare_identifiers(sql)


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("CREATE MATERIALIZED VIEW d.mv TO d.dst (id UInt64) AS SELECT 1", ("d", "dst")),
        ("CREATE MATERIALIZED VIEW d.mv UUID 'x' TO `o`.`t` AS SELECT 1", ("o", "t")),
        ("CREATE MATERIALIZED VIEW mv TO dst AS SELECT 1", (None, "dst")),
        (
            "CREATE MATERIALIZED VIEW d.mv (id UInt64) ENGINE = MergeTree ORDER BY id AS SELECT 1",
            None,
        ),
        ("CREATE MATERIALIZED VIEW d.mv TO INNER UUID 'x' ENGINE = Log AS SELECT 1", None),
        ("CREATE VIEW d.v AS SELECT 1 FROM t", None),
    ],
)
def test_materialized_view_target(sql: str, expected: object) -> None:
    assert materialized_view_target(sql) == expected


@pytest.mark.parametrize(
    "sql, kind",
    [
        ("CREATE TABLE a.b (x UInt8) ENGINE=Log", "TABLE"),
        ("create materialized  view a.b TO c AS SELECT 1", "MATERIALIZED VIEW"),
        ("CREATE DICTIONARY a.b (x UInt8) PRIMARY KEY x", "DICTIONARY"),
        ("CREATE VIEW IF NOT EXISTS a.b AS SELECT 1", "VIEW"),
        ("CREATE DATABASE x ENGINE = Atomic", "DATABASE"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


def test_not_a_create_statement() -> None:
    with pytest.raises(ValueError):
        statement_kind("DROP TABLE x")


def test_token_identifier() -> None:
    assert Token.__name__ == "Token"
    assert [t.identifier for t in tokenize("`a\\`b`")] == ["a`b"]


def test_rename_dictionary_source_database() -> None:
    from casbackup.clickhouse.sql import rename_dictionary_source

    sql = "CREATE DICTIONARY shop.d (id UInt64) PRIMARY KEY id SOURCE(CLICKHOUSE(TABLE 'users' DB 'shop')) LAYOUT(FLAT()) LIFETIME(0)"
    out = rename_dictionary_source(sql, {"shop": "shop copy"})
    assert "DB 'shop copy'" in out and "TABLE 'users'" in out
    assert rename_dictionary_source("CREATE TABLE a.b (DB String) ENGINE = Log", {"a": "x"}) == (
        "CREATE TABLE a.b (DB String) ENGINE = Log"
    )


@pytest.mark.parametrize(
    ("engine", "renamed"),
    [
        # 26.x writes the arguments as strings, 18.16 keeps the identifiers it was given.
        (
            "Buffer('shop', 'base', 1, 10, 100, 10, 100, 10000, 100000)",
            "Buffer('shop copy', 'base',",
        ),
        ("Buffer(shop, base, 1, 10, 100, 10, 100, 10000, 100000)", "Buffer(`shop copy`, base,"),
        ("Merge('shop', '^base$')", "Merge('shop copy', '^base$')"),
        ("Merge(shop, '^base$')", "Merge(`shop copy`, '^base$')"),
        (
            "Distributed('c', 'shop', 'base', rand())",
            "Distributed('c', 'shop copy', 'base', rand())",
        ),
        ("Distributed(c, shop, base)", "Distributed(c, `shop copy`, base)"),
        ("Dictionary('shop.d')", "Dictionary('shop copy.d')"),
    ],
)
def test_rename_engine_database(engine: str, renamed: str) -> None:
    from casbackup.clickhouse.sql import rename_engine_database

    sql = f"CREATE TABLE shop.t (`k` UInt32) ENGINE = {engine}"
    assert renamed in rename_engine_database(sql, {"shop": "shop copy"})
    assert rename_engine_database(sql, {"other": "x"}) == sql


@pytest.mark.parametrize(
    "engine",
    [
        "Merge(REGEXP('^shop'), '^base$')",  # an expression: left alone
        "Buffer('other', 'shop', 1, 10, 100, 10, 100, 10000, 100000)",  # a table named shop
        "Distributed('shop', 'other', 'shop')",  # a cluster named shop
        "Dictionary(shop)",  # 18.16: a dictionary named shop (its dictionaries have no database)
        "MergeTree ORDER BY tuple() SETTINGS storage_policy = 'shop'",
        "Log COMMENT 'shop'",
    ],
)
def test_rename_engine_database_leaves_other_arguments(engine: str) -> None:
    from casbackup.clickhouse.sql import rename_engine_database

    sql = f"CREATE TABLE x.t (`k` UInt32) ENGINE = {engine}"
    assert rename_engine_database(sql, {"shop": "shop copy"}) == sql
