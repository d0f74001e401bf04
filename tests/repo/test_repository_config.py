"""The repository config read back from a store is untrusted: wrong JSON types are damage (exit 15)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode, RepositoryError, UnsupportedFormat
from casbackup.repo.chunker import ChunkerParams
from casbackup.repo.repository import RepositoryConfig
from tests.cli.test_failures import one_line_error

GOOD = RepositoryConfig(id="0123456789abcdef" * 2, created=datetime(2026, 1, 2, tzinfo=UTC))


def with_field(name: str, value: Any) -> bytes:
    doc = json.loads(GOOD.encode())
    doc[name] = value
    return json.dumps(doc).encode()


def without_field(name: str) -> bytes:
    doc = json.loads(GOOD.encode())
    del doc[name]
    return json.dumps(doc).encode()


def test_a_config_round_trips() -> None:
    assert RepositoryConfig.decode(GOOD.encode(), "here") == GOOD


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_field("chunker", [1]), "'chunker' is a JSON array, expected a JSON object"),
        (with_field("chunker", "fastcdc"), "'chunker' is a JSON string, expected a JSON object"),
        (with_field("id", 123), "'id' is a JSON number, expected a JSON string"),
        (with_field("id", None), "'id' is a JSON null, expected a JSON string"),
        (with_field("id", "ABCDEF" + "0" * 26), "is not 32 lower-case hex digits"),
        (with_field("id", "urn:uuid:" + "0" * 32), "is not 32 lower-case hex digits"),
        (without_field("id"), "no 'id'"),
        (with_field("created", 1700000000), "'created' is a JSON number, expected a JSON string"),
        (with_field("created", "yesterday"), "Invalid isoformat string"),
        (with_field("chunker", {"algorithm": [1]}), "unknown chunking algorithm [1]"),
        (
            with_field("chunker", {**ChunkerParams().to_dict(), "seed": -1}),
            "seed must be within",
        ),
        # Each size within its range, but not together: create ended as exit 70 (pyfastcdc).
        (
            with_field("chunker", {**ChunkerParams().to_dict(), "avg_size": 256}),
            "avg_size must be within [min_size, max_size]",
        ),
        (
            with_field("chunker", {**ChunkerParams().to_dict(), "seed": 2**64 - 1}),
            "seed must be within [0, 2^63)",
        ),
        # Digests and chunks would be read with the wrong algorithm.
        (with_field("hash", "sha256"), "hash 'sha256': this casbackup knows 'blake3' only"),
        (with_field("compression", "lz4"), "compression 'lz4': this casbackup knows 'zstd' only"),
        (with_field("hash", 1), "'hash' is a JSON number, expected a JSON string"),
        (without_field("compression"), "no 'compression'"),
        (b"[" * 100_000, "nested too deeply"),
        (b"\xff\xfe not utf-8", "unreadable repository config"),
        (b'["format", "casbackup-repository"]', "not a casbackup repository config"),
    ],
)
def test_wrong_types_are_integrity_errors(data: bytes, message: str) -> None:
    with pytest.raises(RepositoryError) as raised:
        RepositoryConfig.decode(data, "here")
    assert raised.value.exit_code == ExitCode.INTEGRITY
    assert message in raised.value.message
    assert "\n" not in raised.value.message


@pytest.mark.parametrize("version", [True, 1.0, "1", [1], 2])
def test_a_version_that_is_not_the_integer_1_is_unsupported(version: object) -> None:
    with pytest.raises(UnsupportedFormat):
        RepositoryConfig.decode(with_field("version", version), "here")


@pytest.mark.parametrize(("name", "value"), [("chunker", [1]), ("id", 123)])
def test_list_reports_a_config_of_wrong_types_in_one_line(
    cli: Any, tmp_path: Path, name: str, value: object
) -> None:
    assert cli(None, "init").code == 0
    config = tmp_path / "repo" / "config"
    doc = json.loads(config.read_text())
    doc[name] = value
    config.write_text(json.dumps(doc))

    listed = cli(None, "list")
    assert listed.code == ExitCode.INTEGRITY
    one_line_error(listed.stderr)
    assert "invalid repository config" in listed.stderr
