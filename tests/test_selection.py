"""Table patterns and partition specs (--tables, --exclude, --partitions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbackup.selection import partition_selected, split_specs, unmatched


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["202401"], ("202401",)),
        (["202401,202402", "202403"], ("202401", "202402", "202403")),
        (["('eu', 3)"], ("('eu', 3)",)),
        (["('eu', 3),'us'"], ("('eu', 3)", "'us'")),
        (["db.t:'a,b'"], ("db.t:'a,b'",)),
        (["'it\\'s, here'"], ("'it\\'s, here'",)),
        ([" 1 , , 2 "], ("1", "2")),
    ],
)
def test_split_specs(values: list[str], expected: tuple[str, ...]) -> None:
    assert split_specs(values) == expected


@given(st.lists(st.from_regex(r"[0-9a-z_]{1,12}", fullmatch=True), min_size=1, max_size=6))
def test_split_specs_of_plain_ids_is_a_plain_split(ids: list[str]) -> None:
    assert split_specs([",".join(ids)]) == tuple(ids)


@pytest.mark.parametrize(
    ("spec", "database", "table", "partition_id", "value", "chosen"),
    [
        ("202401", "db", "t", "202401", "202401", True),
        ("202402", "db", "t", "202401", "202401", False),
        ("eu", "db", "t", "a1b2c3", "'eu'", True),  # value without its quotes
        ("'eu'", "db", "t", "a1b2c3", "'eu'", True),
        ("a1b2c3", "db", "t", "a1b2c3", "'eu'", True),  # by id
        ("db.t:202401", "db", "t", "202401", "202401", True),
        ("db.t:202402", "db", "t", "202401", "202401", False),
        ("db.t:202402", "db", "other", "202401", "202401", False),  # restore: nothing
        ("db.*:202401", "db", "other", "202401", "202401", True),
        ("('eu', 3)", "db", "t", "f00", "('eu', 3)", True),
        # How both engines print values: a lone string or date bare, a tuple without spaces.
        ("'eu'", "db", "t", "a1b2c3", "eu", True),
        ("'us'", "db", "t", "a1b2c3", "eu", False),
        ("'a/b'", "db", "t", "f00", "a/b", True),
        ("'it\\'s'", "db", "t", "f00", "it's", True),
        ("'it''s'", "db", "t", "f00", "it's", True),
        ("''", "db", "t", "f00", "", True),
        ("'2024-01-01'", "db", "t", "20240101", "2024-01-01", True),
        ("('eu', 3)", "db", "t", "f00", "('eu',3)", True),
        ("('eu', -3, '2024-01-01')", "db", "t", "f00", "('eu',-3,'2024-01-01')", True),
        ("('eu', 4)", "db", "t", "f00", "('eu',3)", False),
        ("db.t:('us, x', 4)", "db", "t", "f00", "('us, x',4)", True),
        # A time value holds colons; without a db.table scope it is the whole spec.
        ("'2024-01-01 00:00:00'", "db", "t", "f00", "'2024-01-01 00:00:00'", True),
        ("db.t:'2024-01-01 00:00:00'", "db", "t", "f00", "'2024-01-01 00:00:00'", True),
        ("db.t:'2024-01-01 00:00:00'", "db", "t", "f00", "'2024-01-02 00:00:00'", False),
        ("db.t:'2024-01-01 00:00:00'", "db", "u", "f00", "'2024-01-02 00:00:00'", False),
    ],
)
def test_partition_selected(
    spec: str, database: str, table: str, partition_id: str, value: str, chosen: bool
) -> None:
    assert partition_selected(database, table, partition_id, value, [spec]) is chosen


def test_unscoped_specs_limit_every_table_and_scoped_ones_their_own() -> None:
    specs = ["db.t:202401", "202403"]
    for whole in (False, True):
        assert partition_selected("db", "t", "202401", "202401", specs, unnamed_whole=whole)
        assert partition_selected("db", "t", "202403", "202403", specs, unnamed_whole=whole)
        assert not partition_selected("db", "t", "202402", "202402", specs, unnamed_whole=whole)
        assert partition_selected("db", "u", "202403", "202403", specs, unnamed_whole=whole)
        assert not partition_selected("db", "u", "202401", "202401", specs, unnamed_whole=whole)


def test_a_table_only_scoped_specs_exist_for_is_whole_for_create_and_empty_for_restore() -> None:
    """operations.md: create backs up other tables whole; restore brings back only what is named."""
    specs = ["db.t:202401"]
    assert partition_selected("db", "other", "202405", "202405", specs, unnamed_whole=True)
    assert not partition_selected("db", "other", "202405", "202405", specs)
    assert not partition_selected("db", "t", "202405", "202405", specs, unnamed_whole=True)


def test_no_specs_select_every_partition() -> None:
    assert partition_selected("db", "t", "x", "x", [])


class _T:
    def __init__(self, database: str, name: str) -> None:
        self.database, self.name = database, name


def test_unmatched_patterns_in_their_order() -> None:
    items = [_T("shop", "users"), _T("shop", "events"), _T("logs", "hits")]
    assert unmatched(items, ["shop.*", "shop.evnts", "*.hits", "Shop.users", "x.*"]) == [
        "shop.evnts",
        "Shop.users",  # case-sensitive, as matching is
        "x.*",
    ]
    assert unmatched([], ["*.*"]) == ["*.*"]
