"""Repositories written by earlier casbackup releases, read by this one.

Each test builds the older artifact itself (a manifest without the fields a
later release added) rather than running an old checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest
import zstandard

from casbackup.errors import ExitCode
from casbackup.repo import manifest as mf
from casbackup.repo.keys import manifest_key
from tests.cli.test_verify import set_fingerprints, verify
from tests.engines import Engine, ServerEngine


def rewrite_manifest(repo_dir: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a committed manifest's document as an older release would have written it."""
    path = repo_dir / manifest_key(name)
    doc = mf.decode(path.read_bytes(), name).model_dump(mode="python")
    doc["started_at"] = doc["started_at"].isoformat()
    doc["finished_at"] = doc["finished_at"].isoformat()
    change(doc)
    body = zstandard.ZstdCompressor().compress(msgpack.packb(doc, use_bin_type=True))
    path.write_bytes(mf.MAGIC + blake3.blake3(body).digest() + body)


def as_written_before_partition_values(repo_dir: Path, name: str) -> None:
    """Releases before `--partitions` wrote parts without `partition`."""

    def change(doc: dict[str, Any]) -> None:
        for table in doc["tables"]:
            for part in table["parts"]:
                del part["partition"]

    rewrite_manifest(repo_dir, name, change)


def test_partitions_by_value_of_a_backup_without_partition_values_says_to_use_ids(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A value cannot match what an older release never recorded: the warning says so, and ids work."""
    db = f"`{dbname}`"
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, k UInt64) ENGINE = MergeTree PARTITION BY d ORDER BY k"
    )
    engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % 3, number FROM numbers(300)"
    )
    assert cli(engine, "init").code == 0
    assert cli(engine, "create", "old", "--tables", f"{dbname}.*").code == 0
    as_written_before_partition_values(tmp_path / "repo", "old")
    assert cli(engine, "catalog", "rebuild").code == 0

    copy = f"{dbname}_copy"
    by_value = cli(
        engine, "restore", "old", "--as", f"{dbname}:{copy}", "--partitions", "2024-01-02"
    )
    assert by_value.code == ExitCode.WARNING, by_value.stderr
    assert "--partitions '2024-01-02' chose no partition" in by_value.stderr
    assert "does not record partition values" in by_value.stderr
    assert "by id" in by_value.stderr and "show old --parts" in by_value.stderr

    by_id = cli(
        engine,
        "restore",
        "old",
        "--as",
        f"{dbname}:{copy}",
        "--partitions",
        "20240102",
        "--drop-existing",
    )
    assert by_id.code == 0, by_id.stderr
    assert engine.value(f"SELECT count() FROM `{copy}`.t") == 100


def test_fingerprints_of_the_first_releases_that_took_them_match_on_18_16(
    server_engine: ServerEngine, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before columns were probed (8de9fe7), 18.16 hashed every column through toString.

    Those fingerprints name no expression, like the later legacy ones that
    hash what 18.16 accepts natively: verify --restore of an intact backup
    reported 'mismatch' (exit 19) for them.
    """
    db = "older_first_fingerprints"
    s = server_engine.sql
    s(f"DROP DATABASE IF EXISTS {db}")
    s(f"CREATE DATABASE {db}")
    s(
        f"CREATE TABLE {db}.t (d Date, k UInt64, v Float64, s String, n Nullable(UInt32)) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY k"
    )
    s(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % 40, number, number / 7, "
        "toString(number), if(number % 3 = 0, NULL, toUInt32(number)) FROM numbers(1000)"
    )
    set_fingerprints(tmp_path, monkeypatch, "true")
    try:
        assert cli(server_engine, "init").code == 0
        assert cli(server_engine, "create", "first", "--tables", f"{db}.*").code == 0
        as_text = ", ".join(f"ifNull(toString({c}), '\\\\N')" for c in ("d", "k", "v", "s", "n"))
        by_part = {
            part: (rows, digest)
            for part, rows, digest in s(
                f"SELECT _part, count(), sum(cityHash64({as_text})) FROM {db}.t GROUP BY _part"
            )
        }

        def first_release(doc: dict[str, Any]) -> None:
            for table in doc["tables"]:
                for part in table["parts"]:
                    rows, digest = by_part[part["name"]]
                    part["fingerprint"] = {"rows": rows, "hash": digest}

        rewrite_manifest(tmp_path / "repo", "first", first_release)
        assert cli(server_engine, "catalog", "rebuild").code == 0
        code, report = verify(cli, server_engine, "first", "--restore")
        [table] = report["tables"]
        assert code == 0 and report["problems"] == [], report
        assert table["fingerprint"] == "match"

        # A different row still fails under either form.
        def tampered(doc: dict[str, Any]) -> None:
            part = doc["tables"][0]["parts"][0]
            part["fingerprint"]["hash"] = (part["fingerprint"]["hash"] + 1) % 2**64

        rewrite_manifest(tmp_path / "repo", "first", tampered)
        assert cli(server_engine, "catalog", "rebuild").code == 0
        code, report = verify(cli, server_engine, "first", "--restore")
        assert code == ExitCode.VERIFY_FAILED and report["tables"][0]["fingerprint"] == "mismatch"
    finally:
        s(f"DROP DATABASE IF EXISTS {db}")
