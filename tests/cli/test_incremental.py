"""Incremental cost follows content, not part names: mutations, merges, copies.

Each scenario backs up, changes the table the way operators do, backs up
again and checks, from the manifests and the catalog:

- exact accounting: the raw bytes this backup stored equal the raw size of
  the chunks it references that no earlier backup references;
- those bytes never exceed the bytes of files whose content is new;
- which files are new (e.g. only the updated column's files);
- that files unchanged on disk were not even read;
- and that the latest backup still restores to the same fingerprint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casbackup.catalog import Catalog
from casbackup.errors import ExitCode
from casbackup.repo.manifest import Manifest
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from tests.clickhouse.schema import fingerprints, q
from tests.engines import Engine
from tests.helpers import flip_byte

ROWS = 400_000


@dataclass
class Delta:
    manifest: Manifest
    new_raw: int  # raw bytes of chunks no earlier backup references
    new_files: list[
        tuple[str, str, str, int]
    ]  # (table, part, path, size) of files with new content
    reused_paths: int  # part files whose content an earlier backup already had

    @property
    def new_file_names(self) -> set[str]:
        return {path.rsplit("/", 1)[-1] for _, _, path, _ in self.new_files}


def delta(repo_dir: Path, name: str) -> Delta:
    repo = Repository.open(LocalStore(repo_dir))
    names = repo.list_backup_names()
    current = repo.read_manifest(name)
    earlier = [
        repo.read_manifest(n)
        for n in names
        if n != name and repo.read_manifest(n).started_at < current.started_at
    ]
    earlier_chunks = set().union(*(m.chunk_ids() for m in earlier)) if earlier else set()
    earlier_files = {f.id for m in earlier for f in m.files}
    with Catalog.open(f"sqlite:///{repo_dir / 'catalog.sqlite'}", repo.id) as catalog:
        new_chunks = current.chunk_ids() - earlier_chunks
        locations = catalog.index.locate(new_chunks)
    new_files, reused = [], 0
    for table in current.tables:
        for part in table.parts:
            for pf in part.files:
                if pf.file_id in earlier_files:
                    reused += 1
                else:
                    new_files.append((table.name, part.name, pf.path, pf.size))
    return Delta(current, sum(locations[c].raw_size for c in new_chunks), new_files, reused)


def check_accounting(d: Delta) -> None:
    stats = d.manifest.stats
    assert stats.new_raw_bytes == d.new_raw, "stored bytes are exactly the new chunks"
    distinct_new_content = {}
    for _, _, path, size in d.new_files:
        distinct_new_content[path, size] = size
    assert d.new_raw <= sum(size for _, _, _, size in d.new_files)


def create_table(engine: Engine, db: str, table: str = "events") -> None:
    engine.sql(f"CREATE DATABASE IF NOT EXISTS {q(db)}")
    wide = " SETTINGS min_bytes_for_wide_part = 0" if engine.modern else ""
    engine.sql(
        f"CREATE TABLE {q(db)}.{table} (id UInt64, d Date, user UInt32, s String, v UInt64, "
        f"price Decimal(12, 2)) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY (user, id){wide}"
    )


def fill(engine: Engine, db: str, table: str = "events", rows: int = ROWS) -> None:
    for start in range(0, rows, rows // 2):
        engine.sql(
            f"INSERT INTO {q(db)}.{table} SELECT number, toDate('2024-01-01') + number % 90, "
            f"number % 1000, concat('s', toString(cityHash64(number))), number, number / 100 "
            f"FROM numbers({start}, {rows // 2})"
        )


def mutate(engine: Engine, sql: str) -> None:
    """Run a mutation and wait until it is done (18.16 has no mutations_sync)."""
    if engine.modern:
        engine.sql(f"{sql} SETTINGS mutations_sync = 2")
        return
    engine.sql(sql)
    deadline = time.monotonic() + 120
    while engine.value("SELECT count() FROM system.mutations WHERE NOT is_done"):
        assert time.monotonic() < deadline, "mutation did not finish"
        time.sleep(0.1)


def backup(engine: Engine, cli: Any, name: str, db: str) -> dict[str, Any]:
    result = cli(engine, "create", name, "--tables", f"{db}.*", "--json")
    assert result.code == 0, result.stderr
    return result.json()  # type: ignore[no-any-return]


def restores_to(engine: Engine, cli: Any, name: str, db: str) -> None:
    copy = f"{db}_r"
    result = cli(engine, "restore", name, "--as", f"{db}:{copy}")
    assert result.code == 0, result.stderr
    original = fingerprints(engine, [db])
    restored = {k.replace(copy, db, 1): v for k, v in fingerprints(engine, [copy]).items()}
    assert restored == original
    engine.sql(f"DROP DATABASE {q(copy)}")


def part_names(engine: Engine, db: str, table: str = "events") -> set[str]:
    return {
        n
        for (n,) in engine.sql(
            f"SELECT name FROM system.parts WHERE database = '{db}' AND table = '{table}' AND active"
        )
    }


def test_mutation_of_one_partition_costs_that_partition(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname)
    cli(engine, "init")
    first = backup(engine, cli, "b1", dbname)
    names_before = part_names(engine, dbname)
    mutate(
        engine, f"ALTER TABLE {q(dbname)}.events DELETE WHERE toYYYYMM(d) = 202402 AND id % 10 = 0"
    )
    names_after = part_names(engine, dbname)
    assert not names_before & names_after  # every part renamed: a part-name tool uploads everything
    second = backup(engine, cli, "b2", dbname)
    d = delta(tmp_path / "repo", "b2")
    check_accounting(d)
    assert {part.split("_")[0] for _, part, _, _ in d.new_files} == {"202402"}
    feb = sum(t["bytes"] for t in second["tables"]) and sum(
        size for _, part, _, size in d.new_files if part.startswith("202402")
    )
    assert second["read_bytes"] < feb + 200_000  # the other months were not read at all
    assert second["new_bytes"] < first["new_bytes"] / 2
    restores_to(engine, cli, "b2", dbname)


def test_update_of_one_column_stores_only_that_column(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname)
    cli(engine, "init")
    backup(engine, cli, "b1", dbname)
    mutate(engine, f"ALTER TABLE {q(dbname)}.events UPDATE v = v + 1 WHERE 1")
    second = backup(engine, cli, "b2", dbname)
    d = delta(tmp_path / "repo", "b2")
    check_accounting(d)
    # statistics.packed: modern servers keep per-column statistics that change with the column
    metadata = {
        "checksums.txt",
        "columns.txt",
        "columns_substreams.txt",
        "serialization.json",
        "metadata_version.txt",
        "statistics.packed",
    }
    assert d.new_file_names - metadata and all(
        n.startswith("v.") for n in d.new_file_names - metadata
    ), d.new_file_names
    column_bytes = sum(size for _, _, path, size in d.new_files if path.startswith("v."))
    assert (
        second["read_bytes"] < column_bytes + 200_000
    )  # other columns' files are hard links: not read
    restores_to(engine, cli, "b2", dbname)


def test_lightweight_delete_stores_the_row_mask(
    chdb_engine: Engine, cli: Any, tmp_path: Path
) -> None:
    db = "t_lightweight_delete"
    chdb_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    create_table(chdb_engine, db)
    fill(chdb_engine, db)
    cli(chdb_engine, "init")
    first = backup(chdb_engine, cli, "b1", db)
    chdb_engine.sql(f"DELETE FROM {db}.events WHERE id % 97 = 0 SETTINGS mutations_sync = 2")
    second = backup(chdb_engine, cli, "b2", db)
    d = delta(tmp_path / "repo", "b2")
    check_accounting(d)
    metadata = {
        "checksums.txt",
        "columns.txt",
        "columns_substreams.txt",
        "serialization.json",
        "metadata_version.txt",
        "count.txt",
    }
    assert d.new_file_names - metadata <= {
        "_row_exists.bin",
        "_row_exists.cmrk2",
        "_row_exists.mrk2",
    }, d.new_file_names
    assert second["new_bytes"] < first["new_bytes"] / 20
    restores_to(chdb_engine, cli, "b2", db)
    chdb_engine.sql(f"DROP DATABASE {db}")


def test_optimize_final_accounting_and_restore(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname)
    cli(engine, "init")
    backup(engine, cli, "b1", dbname)
    engine.sql(f"OPTIMIZE TABLE {q(dbname)}.events FINAL")
    backup(engine, cli, "b2", dbname)
    d = delta(tmp_path / "repo", "b2")
    check_accounting(d)
    assert (
        d.new_files
    )  # merged parts are new files: their cost is whatever content they do not share
    restores_to(engine, cli, "b2", dbname)


def test_dropped_and_restored_table_is_read_again_but_stores_nothing(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname)
    cli(engine, "init")
    first = backup(engine, cli, "b1", dbname)
    engine.sql(f"DROP DATABASE {q(dbname)}")
    assert cli(engine, "restore", "b1").code == 0
    second = backup(engine, cli, "b2", dbname)
    assert (
        second["read_bytes"] == second["logical_bytes"] == first["logical_bytes"]
    )  # new inodes: all read
    assert second["new_bytes"] == 0 and second["new_chunks"] == 0  # same content: nothing stored
    check_accounting(delta(tmp_path / "repo", "b2"))


def test_same_data_in_two_tables(engine: Engine, dbname: str, cli: Any, tmp_path: Path) -> None:
    create_table(engine, dbname, "a")
    fill(engine, dbname, "a")
    cli(engine, "init")
    first = backup(engine, cli, "b1", dbname)
    # b: the same inserts (same content, other inodes); c: partitions attached from a (hard links).
    create_table(engine, dbname, "b")
    fill(engine, dbname, "b")
    create_table(engine, dbname, "c")
    for (partition,) in engine.sql(
        f"SELECT DISTINCT partition FROM system.parts WHERE database = '{dbname}' AND table = 'a' AND active"
    ):
        engine.sql(f"ALTER TABLE {q(dbname)}.c ATTACH PARTITION {partition} FROM {q(dbname)}.a")
    second = backup(engine, cli, "b2", dbname)
    d = delta(tmp_path / "repo", "b2")
    check_accounting(d)
    assert second["logical_bytes"] >= 2.9 * first["logical_bytes"]
    assert second["new_bytes"] < 0.02 * first["new_bytes"]
    # c's files are a's inodes: not read; b's are new inodes: read, but nothing new stored.
    b_bytes = sum(t["bytes"] for t in second["tables"] if t["table"].endswith(".b"))
    assert second["read_bytes"] < b_bytes + 200_000
    restores_to(engine, cli, "b2", dbname)


def test_unchanged_night_reads_almost_nothing(engine: Engine, dbname: str, cli: Any) -> None:
    create_table(engine, dbname)
    fill(engine, dbname, rows=1_000_000)
    cli(engine, "init")
    first = backup(engine, cli, "b1", dbname)
    second = backup(engine, cli, "b2", dbname)
    assert second["new_bytes"] == 0
    assert second["read_bytes"] < 0.01 * first["logical_bytes"]
    rehashed = cli(engine, "create", "b3", "--tables", f"{dbname}.*", "--rehash", "--json").json()
    assert rehashed["read_bytes"] == rehashed["logical_bytes"] and rehashed["new_bytes"] == 0


def test_rehash_warns_of_a_part_file_that_no_longer_matches_checksums_txt(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """--rehash reads every file anyway; a byte changed on disk since ClickHouse wrote the
    part (its size and checksums.txt the same) was stored as read, without a word."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=100_000)
    cli(engine, "init")
    assert cli(engine, "create", "b1", "--tables", f"{dbname}.*", "--rehash").code == 0
    [(path,)] = engine.sql(
        f"SELECT path FROM system.parts WHERE database = '{dbname}' AND active "
        "ORDER BY bytes_on_disk DESC LIMIT 1"
    )
    victim = max(Path(path).glob("*.bin"), key=lambda p: p.stat().st_size)
    flip_byte(victim, victim.stat().st_size // 2, 0x40)
    result = cli(engine, "create", "b2", "--tables", f"{dbname}.*", "--rehash")
    assert result.code == ExitCode.WARNING, result.stderr
    said = " ".join(result.stderr.split())
    assert f"part {Path(path).name}: {victim.name} does not match its checksum" in said
    assert "backed up as it is on disk" in said
