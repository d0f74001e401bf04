from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from casbackup.ordering import creation_order, is_inner_table, rank


@dataclass
class Obj:
    database: str
    name: str
    engine: str
    create_sql: str


def names(objs: list[Obj], extra: list = []) -> list[str]:  # noqa: B006
    return [objs[i].name for i in creation_order(objs, extra)]


SCHEMA = [
    Obj(
        "d",
        "mv",
        "MaterializedView",
        "CREATE MATERIALIZED VIEW d.mv TO d.agg AS SELECT id FROM d.events",
    ),
    Obj("d", "v2", "View", "CREATE VIEW d.v2 AS SELECT * FROM v1"),
    Obj("d", "v1", "View", "CREATE VIEW d.v1 AS SELECT * FROM d.events JOIN d.dict_t USING id"),
    Obj(
        "d",
        "dict",
        "Dictionary",
        "CREATE DICTIONARY d.dict (id UInt64) PRIMARY KEY id SOURCE(CLICKHOUSE(TABLE 'events'))",
    ),
    Obj(
        "d", "dict_t", "Dictionary", "CREATE TABLE d.dict_t (id UInt64) ENGINE = Dictionary(d.dict)"
    ),
    Obj(
        "d",
        "dist",
        "Distributed",
        "CREATE TABLE d.dist (id UInt64) ENGINE = Distributed(c, d, events)",
    ),
    Obj(
        "d",
        "agg",
        "SummingMergeTree",
        "CREATE TABLE d.agg (id UInt64) ENGINE = SummingMergeTree ORDER BY id",
    ),
    Obj(
        "d",
        "events",
        "MergeTree",
        "CREATE TABLE d.events (id UInt64) ENGINE = MergeTree ORDER BY id",
    ),
]


def test_dependencies_come_first() -> None:
    order = names(SCHEMA)
    assert order.index("events") < order.index("v1") < order.index("v2")
    assert order.index("agg") < order.index("mv") and order.index("events") < order.index("mv")
    assert order.index("dict") < order.index("dict_t") < order.index("v1")
    assert order[:2] == ["agg", "events"]  # plain tables first, in their original order


def test_server_edges_are_honoured() -> None:
    objs = [
        Obj("d", "b", "View", "CREATE VIEW d.b AS SELECT 1"),
        Obj("d", "a", "View", "CREATE VIEW d.a AS SELECT 1"),
    ]
    assert names(objs) == ["b", "a"]
    assert names(objs, [(("d", "a"), ("d", "b"))]) == ["a", "b"]


def test_cycle_falls_back_to_rank_order() -> None:
    objs = [
        Obj("d", "x", "View", "CREATE VIEW d.x AS SELECT * FROM d.y"),
        Obj("d", "y", "View", "CREATE VIEW d.y AS SELECT * FROM d.x"),
        Obj("d", "t", "MergeTree", "CREATE TABLE d.t (a UInt8) ENGINE = MergeTree ORDER BY a"),
    ]
    order = names(objs)
    assert order[0] == "t" and sorted(order) == ["t", "x", "y"]


def test_rank_and_inner() -> None:
    assert rank("MergeTree", "CREATE TABLE a.b (x UInt8) ENGINE = MergeTree") == 0
    assert rank("MaterializedView", "CREATE MATERIALIZED VIEW a.b TO c AS SELECT 1") == 4
    assert (
        is_inner_table(".inner_id.0000")
        and is_inner_table(".inner.mv")
        and not is_inner_table("inner")
    )


@given(st.permutations(SCHEMA))
def test_any_input_order_gives_a_valid_order(objs: list[Obj]) -> None:
    order = names(list(objs))
    assert sorted(order) == sorted(o.name for o in SCHEMA)
    assert order.index("events") < order.index("v1") < order.index("v2")
    assert order.index("agg") < order.index("mv")


def test_a_materialized_views_target_outside_the_objects_is_no_dependency() -> None:
    """`create --tables shop.mv` (a view TO shop.agg, not selected) was an internal error:
    KeyError ('shop', 'agg') while ordering, in `tables` as in `create`."""
    objs = [
        Obj("d", "mv", "MaterializedView", "CREATE MATERIALIZED VIEW d.mv TO d.agg AS SELECT 1"),
        Obj("d", "v", "View", "CREATE VIEW d.v AS SELECT * FROM d.mv"),
    ]
    assert names(objs) == ["mv", "v"]
