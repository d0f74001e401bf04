"""Rewriting and reading access statements (pure functions of casbackup.server_state)."""

from __future__ import annotations

import pytest

from casbackup.server_state import (
    _SECRET_HIDDEN,
    _with_policy,
    describe_statement,
    grantees,
    redact,
)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("CREATE USER analyst IDENTIFIED WITH no_password", ("USER", "analyst")),
        ("CREATE USER `odd name` HOST LOCAL", ("USER", "odd name")),
        ("CREATE ROLE IF NOT EXISTS reader", ("ROLE", "reader")),
        (
            "CREATE SETTINGS PROFILE `readonly` SETTINGS readonly = 1",
            ("SETTINGS PROFILE", "readonly"),
        ),
        ("CREATE ROW POLICY p ON db.t USING 1", ("ROW POLICY", "p")),
        ("CREATE QUOTA default KEYED BY user_name TO analyst", ("QUOTA", "default")),
        ("GRANT SELECT ON db.* TO analyst", ("GRANT", "")),
    ],
)
def test_describe_statement(sql: str, expected: tuple[str, str]) -> None:
    assert describe_statement(sql) == expected


@pytest.mark.parametrize(
    ("sql", "policy", "expected"),
    [
        ("CREATE USER a HOST LOCAL", "skip", "CREATE USER IF NOT EXISTS a HOST LOCAL"),
        ("CREATE USER a HOST LOCAL", "replace", "CREATE USER OR REPLACE a HOST LOCAL"),
        ("CREATE USER a HOST LOCAL", "fail", "CREATE USER a HOST LOCAL"),
        (
            "CREATE SETTINGS PROFILE `p` SETTINGS readonly = 1",
            "skip",
            "CREATE SETTINGS PROFILE IF NOT EXISTS `p` SETTINGS readonly = 1",
        ),
        (
            "CREATE ROW POLICY p ON db.t USING x = 'CREATE USER'",
            "replace",
            "CREATE ROW POLICY OR REPLACE p ON db.t USING x = 'CREATE USER'",
        ),
        (
            "CREATE FUNCTION f AS x -> x + 1",
            "skip",
            "CREATE FUNCTION IF NOT EXISTS f AS x -> x + 1",
        ),
        (
            "CREATE FUNCTION f AS x -> x + 1",
            "replace",
            "CREATE OR REPLACE FUNCTION f AS x -> x + 1",
        ),
        (
            "CREATE NAMED COLLECTION c AS host = 'h'",
            "skip",
            "CREATE NAMED COLLECTION IF NOT EXISTS c AS host = 'h'",
        ),
        # No OR REPLACE for named collections: restore_objects drops them first.
        (
            "CREATE NAMED COLLECTION c AS host = 'h'",
            "replace",
            "CREATE NAMED COLLECTION c AS host = 'h'",
        ),
        ("GRANT SELECT ON db.t TO a", "skip", "GRANT SELECT ON db.t TO a"),
    ],
)
def test_with_policy(sql: str, policy: str, expected: str) -> None:
    assert _with_policy(sql, policy) == expected


def test_grantees() -> None:
    assert grantees("GRANT SELECT ON db.t TO analyst, `b c` WITH GRANT OPTION") == [
        "analyst",
        "b c",
    ]
    assert grantees("GRANT reader TO u1") == ["u1"]
    assert grantees("GRANT SELECT(x) ON db.t TO r WITH REPLACE OPTION") == ["r"]
    assert grantees("CREATE USER a") == []


def test_redact_hides_hashes_and_salts_only() -> None:
    sql = (
        "CREATE USER a IDENTIFIED WITH sha256_hash BY 'AB\\'CD' SALT 'x' "
        "HOST LOCAL SETTINGS PROFILE `readonly`"
    )
    assert redact(sql) == (
        "CREATE USER a IDENTIFIED WITH sha256_hash BY '[HIDDEN]' SALT '[HIDDEN]' "
        "HOST LOCAL SETTINGS PROFILE `readonly`"
    )
    assert redact("CREATE QUOTA q KEYED BY user_name") == "CREATE QUOTA q KEYED BY user_name"


@pytest.mark.parametrize(
    ("sql", "hidden"),
    [
        ("CREATE USER a IDENTIFIED WITH sha256_password HOST LOCAL", True),
        ("CREATE USER a IDENTIFIED WITH plaintext_password", True),
        ("CREATE USER a IDENTIFIED WITH sha256_hash BY 'AB' HOST LOCAL", False),
        ("CREATE USER a IDENTIFIED WITH no_password", False),
        ("CREATE USER a IDENTIFIED WITH ldap SERVER 'x'", False),
    ],
)
def test_hidden_secret_detection(sql: str, hidden: bool) -> None:
    assert bool(_SECRET_HIDDEN.search(sql)) is hidden
