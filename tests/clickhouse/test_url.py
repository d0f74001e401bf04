"""ClickHouse URLs: what parses, and errors that never show any part of a password."""

from __future__ import annotations

import pytest

from casbackup.clickhouse.client import parse_url
from casbackup.errors import ConfigError


@pytest.mark.parametrize(
    "url",
    [
        "clickhouse://backup:Qx7z#Kv9w@127.0.0.1:9000",  # '#' ends the authority
        "clickhouse://backup:12345?x@127.0.0.1:9000",  # '?' ends it: "12345" read as the port
        "clickhouse://backup:Qx7z/Kv9w@127.0.0.1:9000",  # '/' ends it
        "clickhouse://backup:Qx7zKv9w@127.0.0.1:9000/?x=1@2",
        "clickhouse://backup:Qx7zKv9w@127.0.0.1:9000#",
        "clickhouse://backup:Qx7zKv9w",  # no host: the password is read as a port
        "clickhouse://backup:Qx7zKv9w@[::1",
        "clickhouse://backup:Qx7zKv9w@127.0.0.1:9000/?Qx7zKv9w",
    ],
)
def test_a_password_that_breaks_the_url_is_refused_unseen(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    message = caught.value.message
    assert "Qx7z" not in message and "Kv9w" not in message and "12345" not in message
    assert "percent-encode" in message and "\n" not in message


@pytest.mark.parametrize(
    "query, name",
    [
        ("connect_timeout=-1", "connect_timeout"),
        ("connect_timeout=nan", "connect_timeout"),
        ("connect_timeout=0", "connect_timeout"),
        ("connect_timeout=ten", "connect_timeout"),
        ("send_receive_timeout=inf", "send_receive_timeout"),
        ("send_receive_timeout=1e20", "send_receive_timeout"),
        ("secure=maybe", "secure"),
    ],
)
def test_options_out_of_range_are_configuration_errors(query: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        parse_url(f"clickhouse://default@127.0.0.1:9000/?{query}")


@pytest.mark.parametrize("port", ["0", "65536", "x"])
def test_a_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        parse_url(f"clickhouse://default@127.0.0.1:{port}")


def test_percent_encoded_passwords_and_options_parse() -> None:
    spec = parse_url(
        "clickhouse://backup:Pa55%23w%3Fr%2Fd%40x%3A@db.example:9001/"
        "?connect_timeout=2.5&send_receive_timeout=60&secure=true"
    )
    assert (spec.user, spec.password, spec.host, spec.port) == (
        "backup",
        "Pa55#w?r/d@x:",
        "db.example",
        9001,
    )
    assert (spec.connect_timeout, spec.send_receive_timeout, spec.secure) == (2.5, 60.0, True)
    assert parse_url("clickhouses://u@h").port == 9440
    assert parse_url("clickhouse://u:pa:ss@h").password == "pa:ss"  # the first ':' splits


def test_a_chdb_path_may_hold_an_at_sign() -> None:
    spec = parse_url("chdb:///var/lib/a@b?config=/etc/c.xml")
    assert (spec.path, spec.config_file) == ("/var/lib/a@b", "/etc/c.xml")


@pytest.mark.parametrize("url", ["chdb:///var/lib/data?config", "chdb:///var/lib/data#x"])
def test_a_chdb_url_error_gives_no_password_advice(url: str) -> None:
    """A chdb URL holds no password: the advice to percent-encode one would mislead."""
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    assert caught.value.message.startswith("configuration error: invalid chdb URL: ")
    assert "password" not in caught.value.message
