"""Repositories written by earlier casbackup releases, read by this one.

Each test builds the older artifact itself (a manifest without the fields a
later release added) rather than running an old checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blake3
import msgpack
import zstandard

from casbackup.errors import ExitCode
from casbackup.repo import manifest as mf
from casbackup.repo.keys import manifest_key
from tests.engines import Engine


def as_written_before_partition_values(repo_dir: Path, name: str) -> None:
    """Rewrite a manifest as releases before `--partitions` wrote it: parts without `partition`."""
    path = repo_dir / manifest_key(name)
    doc = mf.decode(path.read_bytes(), name).model_dump(mode="python")
    doc["started_at"] = doc["started_at"].isoformat()
    doc["finished_at"] = doc["finished_at"].isoformat()
    for table in doc["tables"]:
        for part in table["parts"]:
            del part["partition"]
    body = zstandard.ZstdCompressor().compress(msgpack.packb(doc, use_bin_type=True))
    path.write_bytes(mf.MAGIC + blake3.blake3(body).digest() + body)


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
