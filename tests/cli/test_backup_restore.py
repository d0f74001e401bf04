"""create and restore end to end, on the 18.16 server and on chdb, through the CLI."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import pytest

from casbackup import restore
from casbackup import restore as restore_module
from casbackup.errors import ExitCode
from casbackup.process import ProcessTag
from casbackup.repo.reader import ChunkFetcher
from casbackup.restore import RestoreService
from tests.clickhouse.schema import (
    ODD_TABLE,
    create_long_part_names,
    create_realistic,
    fingerprints,
    odd_database,
    q,
    server_for,
)
from tests.engines import Engine, ServerEngine
from tests.helpers import after_staging, flip_byte, hinted_one_ahead


def drop_databases(engine: Engine, *names: str) -> None:
    for name in names:
        engine.sql(f"DROP DATABASE IF EXISTS {q(name)}")


def test_roundtrip_of_realistic_tables(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname)
    databases = [dbname, odd_database(dbname)]
    before = fingerprints(engine, databases)
    assert len(before) >= 5 and all(f.rows for k, f in before.items() if not k.endswith(".empty"))

    assert cli(engine, "init").code == 0
    created = cli(
        engine, "create", "full", "--tables", f"{dbname}.*,{odd_database(dbname)}.*", "--json"
    )
    assert created.code == 0, created.stderr
    report = created.json()
    assert report["logical_bytes"] > 0 and report["new_bytes"] > 0
    recorded_rows = {t["table"]: t["rows"] for t in report["tables"]}
    assert recorded_rows[f"{dbname}.empty"] == 0
    assert engine.shadow_dirs() == []

    drop_databases(engine, *databases)
    restored = cli(engine, "restore", "full", "--json")
    assert restored.code == 0, restored.stderr

    assert fingerprints(engine, databases) == before
    source = "events_wide" if engine.modern else "events"
    assert engine.value(f"SELECT count() FROM {q(dbname)}.v") == 100
    assert engine.value(f"SELECT sum(k) FROM {q(odd_database(dbname))}.{q(ODD_TABLE)}") == 3
    # The restored materialized views are live again: new rows flow into their targets.
    agg_before = engine.value(f"SELECT sum(c) FROM {q(dbname)}.agg")
    inner_before = engine.value(f"SELECT count() FROM {q(dbname)}.mv_inner")
    engine.sql(f"INSERT INTO {q(dbname)}.{source} (id, d) SELECT 100000000, toDate('2024-02-02')")
    assert engine.value(f"SELECT sum(c) FROM {q(dbname)}.agg") == agg_before + 1
    assert engine.value(f"SELECT count() FROM {q(dbname)}.mv_inner") == inner_before + 1


def test_modern_parts_are_wide_compact_and_have_projections(chdb_engine: Engine, cli: Any) -> None:
    """The chdb schema really exercises both part formats, projections and skip indexes."""
    db = "t_part_shapes"
    drop_databases(chdb_engine, db, odd_database(db))
    create_realistic(chdb_engine, db, rows=4000)
    types = dict(
        chdb_engine.sql(
            f"SELECT table, groupUniqArray(part_type) FROM system.parts WHERE database = '{db}' AND active GROUP BY table"
        )
    )
    assert types["events_wide"] == ["Wide"] and types["events_compact"] == ["Compact"]
    assert cli(chdb_engine, "init").code == 0
    assert cli(chdb_engine, "create", "shapes", "--tables", f"{db}.events_wide").code == 0
    shown = cli(chdb_engine, "show", "shapes", "--json").json()
    files = {f for t in shown["tables"] for p in t["parts"] for f in [p["files"]]}
    assert files
    drop_databases(chdb_engine, db, odd_database(db))
    assert cli(chdb_engine, "restore", "shapes").code == 0
    paths = chdb_engine.sql(f"SELECT path FROM system.parts WHERE database = '{db}' AND active")
    assert any((Path(p) / "by_d.proj").is_dir() for (p,) in paths)
    # skip indexes: skp_idx_<name>.* files, or one skp_idx.packed in newer part formats
    assert any(list(Path(p).glob("skp_idx*")) for (p,) in paths)
    assert chdb_engine.value(f"SELECT count() FROM {db}.events_wide WHERE s = '17'") == 1
    drop_databases(chdb_engine, db, odd_database(db))


def test_a_part_of_more_files_than_the_descriptor_limit_restores(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """A wide part of a 700-column table has some 1,400 files or more: more than the
    descriptors a restore may hold (1024 under systemd's default soft limit)."""
    columns = ", ".join(f"c{i} UInt8" for i in range(700))
    settings = " SETTINGS min_bytes_for_wide_part = 0" if engine.modern else ""
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(
        f"CREATE TABLE {q(dbname)}.wide (id UInt64, {columns}) "
        f"ENGINE = MergeTree ORDER BY id{settings}"
    )
    values = ", ".join(f"(number + {i}) % 251" for i in range(700))
    engine.sql(f"INSERT INTO {q(dbname)}.wide SELECT number, {values} FROM numbers(100)")
    before = fingerprints(engine, [dbname])
    assert cli(engine, "init").code == 0
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    shown = cli(engine, "show", "b", "--json").json()
    assert max(p["files"] for t in shown["tables"] for p in t["parts"]) > 1400

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 600, hard))
    try:
        restored = cli(engine, "restore", "b", "--as", f"{dbname}:{dbname}_copy")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert restored.code == 0, restored.stderr
    copy = fingerprints(engine, [f"{dbname}_copy"])
    assert {k.replace(f"{dbname}_copy", dbname, 1): v for k, v in copy.items()} == before
    drop_databases(engine, dbname, f"{dbname}_copy")


def restored_copy(engine: Engine, dbname: str, cli: Any, *options: str) -> tuple[str, Any]:
    """Back up the realistic schema as "b" and restore it --as a copy, which must equal it."""
    create_realistic(engine, dbname, rows=4000)
    before = fingerprints(engine, [dbname])
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    copy = f"{dbname}_copy"
    result = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}", *options)
    assert result.code == 0, result.stderr
    after = {k.replace(copy, dbname, 1): v for k, v in fingerprints(engine, [copy]).items()}
    assert after == before
    return copy, result


def test_restore_hints_each_next_batch_before_it_stages_the_current_one(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore, "STAGE_BATCH_BYTES", 1)  # every part a batch of its own
    events: list[tuple[str, Path | None, set[bytes]]] = []  # in the order they happened
    stage, prefetch_first = RestoreService._stage_parts, ChunkFetcher.prefetch_first

    def recording_stage(self: RestoreService, parts: list[Any], detached: Path, *rest: Any) -> Any:
        events.append(("stage", detached, self._chunks_of(parts)))
        return stage(self, parts, detached, *rest)

    def recording_prefetch(self: ChunkFetcher, locations: Any) -> None:
        events.append(("hint", None, set(locations)))
        prefetch_first(self, locations)

    monkeypatch.setattr(RestoreService, "_stage_parts", recording_stage)
    monkeypatch.setattr(ChunkFetcher, "prefetch_first", recording_prefetch)
    restored_copy(engine, dbname, cli)  # the copy equals the source

    tables: dict[Path | None, list[set[bytes]]] = {}
    for kind, detached, chunks in events:
        if kind == "stage":
            tables.setdefault(detached, []).append(chunks)
    assert max(len(batches) for batches in tables.values()) > 1
    # Tables are restored one after the other.
    expected = [
        event for batches in tables.values() for event in hinted_one_ahead(batches, "stage")
    ]
    assert [(kind, chunks) for kind, _, chunks in events] == expected


def test_restore_as_maps_databases_and_rewrites_views(
    engine: Engine, dbname: str, cli: Any
) -> None:
    copy, _ = restored_copy(engine, dbname, cli)
    # The view reads the copy, not the original.
    engine.sql(f"TRUNCATE TABLE {q(dbname)}.{'events_wide' if engine.modern else 'events'}")
    assert engine.value(f"SELECT count() FROM {q(copy)}.v") == 100


def test_restore_as_keeps_columns_qualified_by_a_table_named_like_its_database(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`SELECT logs.id FROM logs.logs`: `logs.id` is a column, and must not become `copy.id`."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(f"CREATE TABLE {db}.{db} (id UInt64, v String) ENGINE = MergeTree ORDER BY id")
    engine.sql(f"INSERT INTO {db}.{db} SELECT number, toString(number) FROM numbers(100)")
    engine.sql(f"CREATE VIEW {db}.v AS SELECT {db}.id AS id, v FROM {db}.{db} WHERE {db}.id < 5")
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    copy = f"{dbname}_r"
    restored = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}")
    assert restored.code == 0, restored.stderr
    engine.sql(f"TRUNCATE TABLE {db}.{db}")  # the copy's view reads the copy
    assert engine.value(f"SELECT count() FROM {q(copy)}.v") == 5
    drop_databases(engine, dbname, copy)


def test_restore_check_refuses_a_damaged_part_and_attaches_nothing(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy, checked = restored_copy(engine, dbname, cli, "--check", "--json")
    assert {t["unchecked_parts"] for t in checked.json()["tables"]} == {0}

    after_staging(monkeypatch, lambda staged: flip_byte(next(staged[-1][1].glob("*mrk*")), -1))
    source = "events_wide" if engine.modern else "events"
    drop_databases(engine, copy)
    refused = cli(
        engine,
        "restore",
        "b",
        "--as",
        f"{dbname}:{copy}",
        "--tables",
        f"{dbname}.{source}",
        "--check",
    )
    assert refused.code == ExitCode.INTEGRITY
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"casbackup: error: restore of {copy}.{source} refused: part ")
    assert (
        "does not match its checksum in checksums.txt; no part of this table was attached" in line
    )
    assert engine.value(f"SELECT count() FROM system.parts WHERE database = '{copy}'") == 0
    server = server_for(engine)
    try:
        table = server.table(copy, source)
        assert table is not None
        assert list((Path(table.data_paths[0]) / "detached").iterdir()) == []
    finally:
        server.close()
    unchecked = cli(
        engine, "restore", "b", "--as", f"{dbname}:{dbname}_2", "--tables", f"{dbname}.{source}"
    )
    assert unchecked.code == 0  # without --check, ATTACH PART only compares sizes


def test_restore_selected_tables_only(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname, rows=2000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    drop_databases(engine, dbname)
    result = cli(engine, "restore", "b", "--tables", f"{dbname}.agg,{dbname}.empty", "--json")
    assert result.code == 0, result.stderr
    assert sorted(t["target"] for t in result.json()["tables"]) == [
        f"{dbname}.agg",
        f"{dbname}.empty",
    ]
    tables = {
        name
        for (name,) in engine.sql(f"SELECT name FROM system.tables WHERE database = '{dbname}'")
    }
    assert tables == {"agg", "empty"}


def test_schema_only(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname, rows=2000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    drop_databases(engine, dbname)
    assert cli(engine, "restore", "b", "--schema-only").code == 0
    source = "events_wide" if engine.modern else "events"
    assert engine.value(f"SELECT count() FROM {q(dbname)}.{source}") == 0
    assert (
        engine.value(
            f"SELECT count() FROM system.tables WHERE database = '{dbname}' AND name = 'v'"
        )
        == 1
    )


def test_data_only_into_existing_empty_tables(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname, rows=2000)
    before = fingerprints(engine, [dbname])
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    for table in ("agg", "empty", "events_wide", "events_compact", "events"):
        engine.sql(f"TRUNCATE TABLE IF EXISTS {q(dbname)}.{q(table)}")
    inner = engine.value(
        f"SELECT name FROM system.tables WHERE database = '{dbname}' AND name LIKE '.inner%'"
    )  # .inner.mv_inner on 18.16, .inner_id.<uuid> in an Atomic database
    engine.sql(f"TRUNCATE TABLE {q(dbname)}.{q(inner)}")
    result = cli(
        engine,
        "restore",
        "b",
        "--data-only",
        "--tables",
        f"{dbname}.*",
        "--exclude",
        f"{dbname}.mv_inner",
    )
    assert result.code == 0, result.stderr
    assert fingerprints(engine, [dbname]) == before


@pytest.mark.parametrize("lookups", [0, 1000], ids=["listed", "looked-up"])
def test_refuses_to_overwrite_and_changes_nothing(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch, lookups: int
) -> None:
    """Targets found by listing their database or one by one (LOOKUPS_BEFORE_LISTING) alike."""
    monkeypatch.setattr(restore, "LOOKUPS_BEFORE_LISTING", lookups)
    create_realistic(engine, dbname, rows=2000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    backed_up = fingerprints(engine, [dbname])
    engine.sql(f"DROP TABLE {q(dbname)}.empty")  # one missing table must not be created either
    before = fingerprints(engine, [dbname])
    result = cli(engine, "restore", "b")
    assert result.code == ExitCode.CONFLICT
    assert "agg has data" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert (
        engine.value(
            f"SELECT count() FROM system.tables WHERE database = '{dbname}' AND name = 'empty'"
        )
        == 0
    )
    assert fingerprints(engine, [dbname]) == before

    replaced = cli(engine, "restore", "b", "--drop-existing")
    assert replaced.code == 0, replaced.stderr
    assert fingerprints(engine, [dbname]) == backed_up


def test_a_mistyped_as_source_is_refused_before_any_change(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`--as shp:copy` for `shop`: once ignored, so the restore went in place, over live tables."""
    create_realistic(engine, dbname, rows=2000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    engine.sql(f"INSERT INTO {q(dbname)}.agg SELECT * FROM {q(dbname)}.agg LIMIT 5")
    before = fingerprints(engine, [dbname])
    typo = dbname[:-1]
    result = cli(engine, "restore", "b", "--as", f"{typo}:{dbname}_copy", "--drop-existing")
    assert result.code == ExitCode.USAGE
    assert result.stderr == (
        f"casbackup: error: --as names {typo!r}, which backup b holds no database of "
        f"(it has: {dbname})\n"
    )
    assert fingerprints(engine, [dbname]) == before
    assert not engine.value(f"SELECT count() FROM system.databases WHERE name = '{dbname}_copy'")


def test_tables_whose_rows_are_not_backed_up_are_said_so(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """Log and Memory tables: schema only, a warning on backup and on a restore that empties one."""
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(f"CREATE TABLE {q(dbname)}.logt (x UInt32) ENGINE = Log")
    engine.sql(f"CREATE TABLE {q(dbname)}.mem (x UInt32) ENGINE = Memory")
    engine.sql(f"CREATE TABLE {q(dbname)}.mt (x UInt32) ENGINE = MergeTree ORDER BY x")
    for table in ("logt", "mem", "mt"):
        engine.sql(f"INSERT INTO {q(dbname)}.{table} SELECT number FROM numbers(77)")
    cli(engine, "init")
    created = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    assert created.code == ExitCode.WARNING
    said = " ".join(created.stderr.split())  # rich wraps long lines
    for table, kind in (("logt", "Log"), ("mem", "Memory")):
        assert (
            f"schema only: {dbname}.{table} ({kind} engine: casbackup backs up the rows of "
            "MergeTree-family tables only)" in said
        )
    assert f"{dbname}.mt" not in said

    # Meant to be schema only ([backup] schema_only): a note, not a warning, for those.
    config = tmp_path / "casbackup.toml"
    config.write_text(f'[backup]\nschema_only = ["{dbname}.mem"]\n')
    intended = cli(engine, "--config", str(config), "create", "b2", "--tables", f"{dbname}.*")
    assert intended.code == ExitCode.WARNING  # logt still
    said = " ".join(intended.stderr.split())
    assert f"warning: schema only: {dbname}.logt" in said
    assert (
        f"schema only: {dbname}.mem" in said and f"warning: schema only: {dbname}.mem" not in said
    )
    config.write_text(f'[backup]\nschema_only = ["{dbname}.logt", "{dbname}.mem"]\n')
    quiet = cli(engine, "--config", str(config), "create", "b3", "--tables", f"{dbname}.*")
    assert quiet.code == 0, quiet.stderr
    assert f"schema only: {dbname}.mem" in " ".join(quiet.stderr.split())
    # --quiet ("no progress bars or notes"): the notes too, as a nightly `--quiet run` logs.
    hushed = cli(
        engine, "--config", str(config), "--quiet", "create", "b4", "--tables", f"{dbname}.*"
    )
    assert hushed.code == 0 and hushed.stderr == "", hushed.stderr

    replaced = cli(engine, "restore", "b", "--drop-existing")
    assert replaced.code == ExitCode.WARNING
    assert (
        f"{dbname}.logt restored empty: the backup holds its schema only "
        "(Log engine rows are not backed up)" in " ".join(replaced.stderr.split())
    )
    assert engine.value(f"SELECT count() FROM {q(dbname)}.mt") == 77
    assert engine.value(f"SELECT count() FROM {q(dbname)}.logt") == 0


def test_unchanged_second_backup_stores_almost_nothing(
    engine: Engine, dbname: str, cli: Any
) -> None:
    create_realistic(engine, dbname, rows=20_000)
    cli(engine, "init")
    first = cli(engine, "create", "b1", "--tables", f"{dbname}.*", "--json").json()
    second = cli(engine, "create", "b2", "--tables", f"{dbname}.*", "--json").json()
    assert first["new_bytes"] > 100_000
    assert second["logical_bytes"] == first["logical_bytes"]
    assert second["new_bytes"] == 0
    listed = cli(engine, "list", "--json").json()
    assert [b["name"] for b in listed] == ["b1", "b2"]
    assert listed[1]["dedupe_ratio"] is None  # nothing new at all


def test_bin_files_of_lz4_parts_are_still_compressed(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """zstd shrinks ClickHouse's LZ4 .bin files; the raw-storage shortcut must not kick in for them."""
    create_realistic(engine, dbname, rows=60_000)
    cli(engine, "init")
    report = cli(engine, "create", "b", "--tables", f"{dbname}.*", "--json").json()
    assert report["new_bytes"] < 0.9 * report["logical_bytes"]


@pytest.mark.parametrize("args", [["tables"], ["tables", "--json"]])
def test_tables_lists_what_create_would_back_up(
    engine: Engine, dbname: str, cli: Any, args: list[str]
) -> None:
    create_realistic(engine, dbname, rows=1000)
    result = cli(engine, *args, "--tables", f"{dbname}.*")
    assert result.code == 0, result.stderr
    text = result.stdout
    assert f"{dbname}.agg" in text and f"{dbname}.v" in text
    if "--json" in args:
        listed = [t["table"] for t in result.json()]
        assert listed.index(f"{dbname}.agg") < listed.index(f"{dbname}.mv")  # creation order


@pytest.mark.parametrize("option", ["--tables", "--exclude"])
def test_a_pattern_without_a_table_part_is_refused(
    engine: Engine, dbname: str, cli: Any, option: str
) -> None:
    """`--exclude shop` excluded nothing (every name is db.table) and create backed shop up;
    `--tables shop` said only 'no tables match'. The config file refuses such a pattern."""
    create_realistic(engine, dbname, rows=100)
    cli(engine, "init")
    for command in (["tables"], ["create", "b"]):
        result = cli(engine, *command, "--tables", f"{dbname}.*", option, dbname)
        assert result.code == ExitCode.USAGE, result.stderr
        assert result.stderr.count("\n") == 1
        assert f"{dbname}.*" in result.stderr and "database.table" in result.stderr
    assert cli(engine, "list", "--json").json() == []


def test_a_pattern_of_several_that_matches_nothing_is_a_warning(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`--tables 'shop.users,shop.evnts'` backed up shop.users alone, with exit 0 and no word
    (found in an operator drill); so did the same typo in `[backup] tables`, every night."""
    create_realistic(engine, dbname, rows=100)
    cli(engine, "init")
    typo = f"{dbname}.evnts"
    chosen = f"{dbname}.empty,{typo}"
    said = f"pattern '{typo}' matches no table (a typo?)"
    listed = cli(engine, "tables", "--tables", chosen, "--json")
    assert listed.code == ExitCode.WARNING and said in listed.stderr
    assert [t["table"] for t in listed.json()] == [f"{dbname}.empty"]
    created = cli(engine, "create", "b", "--tables", chosen, "--exclude", f"{dbname}.nothing")
    assert created.code == ExitCode.WARNING and said in created.stderr, created.stderr
    shown = cli(engine, "show", "b", "--json").json()["tables"]
    assert [(t["database"], t["name"]) for t in shown] == [(dbname, "empty")]
    restored = cli(engine, "restore", "b", "--tables", chosen, "--as", f"{dbname}:{dbname}_r")
    assert restored.code == ExitCode.WARNING and said in restored.stderr, restored.stderr
    # A pattern that matches only excluded tables is not a typo.
    excluded = cli(
        engine,
        "tables",
        "--tables",
        chosen.replace(typo, f"{dbname}.agg"),
        "--exclude",
        f"{dbname}.agg",
    )
    assert excluded.code == 0, excluded.stderr
    engine.sql(f"DROP DATABASE IF EXISTS {dbname}_r")


def test_an_empty_partitions_or_name_is_a_usage_error(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`--partitions "$P"` with P unset read as every partition: with --drop-existing a restore
    replaced whole tables where some partitions were meant. `delete ''` said 'no backup'."""
    create_realistic(engine, dbname, rows=100)
    cli(engine, "init")
    refused = cli(engine, "create", "b", "--tables", f"{dbname}.*", "--partitions", "")
    assert refused.code == ExitCode.USAGE and "--partitions names no partition" in refused.stderr
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code in (0, ExitCode.WARNING)
    restore = ["restore", "b", "--tables", f"{dbname}.empty", "--drop-existing"]
    assert cli(engine, *restore, "--partitions", " , ").code == ExitCode.USAGE
    emptied = cli(engine, "delete", "")
    assert emptied.code == ExitCode.USAGE and "the backup name is empty" in emptied.stderr
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b"]


def test_show_reads_the_manifest(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname, rows=1000)
    cli(engine, "init")
    cli(engine, "create", "b", "--tables", f"{dbname}.*")
    shown = cli(engine, "show", "b", "--parts")
    assert shown.code == 0 and f"{dbname}.agg" in shown.stdout
    document = cli(engine, "show", "b", "--json").json()
    assert document["clickhouse_version"] and any(t["parts"] for t in document["tables"])


def test_catalog_rebuild_through_the_cli(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_realistic(engine, dbname, rows=2000)
    cli(engine, "init")
    cli(engine, "create", "b1", "--tables", f"{dbname}.*")
    before = cli(engine, "list", "--json").json()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "repo" / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = cli(engine, "catalog", "rebuild", "--json")
    assert rebuilt.code == 0, rebuilt.stderr
    assert rebuilt.json()["backups"] == 1
    assert cli(engine, "list", "--json").json() == before
    drop_databases(engine, dbname)
    assert cli(engine, "restore", "b1").code == 0  # restores with the rebuilt catalog alone


def test_list_imports_a_backup_the_catalog_missed(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """Another host (or a crash after the commit point) left the catalog behind the store."""
    create_realistic(engine, dbname, rows=500)
    cli(engine, "init")
    cli(engine, "create", "b1", "--tables", f"{dbname}.*")
    import sqlite3

    with sqlite3.connect(tmp_path / "repo" / "catalog.sqlite") as raw:
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("UPDATE backups SET state = 'running'")
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b1"]


def test_table_names_that_look_like_markup_are_printed_as_they_are(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """Names reach the terminal through rich, which read "[/]bad" as a closing tag (exit 70,
    for restore after the data was restored) and "[bold]secret" as a style; tables, show,
    restore and verify print them verbatim (the progress bar: tests/cli/test_output.py)."""
    names = ["[/]bad", "[bold]secret", ":smile: x"]
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    for name in names:
        engine.sql(f"CREATE TABLE {q(dbname)}.{q(name)} (x UInt32) ENGINE = MergeTree ORDER BY x")
        engine.sql(f"INSERT INTO {q(dbname)}.{q(name)} SELECT number FROM numbers(10)")
    cli(engine, "init")
    every = ("--tables", f"{dbname}.*")
    created = cli(engine, "create", "b", *every)
    assert created.code == 0, created.stderr
    for command in (["tables", *every], ["show", "b"], ["show", "b", "--parts"]):
        result = cli(engine, *command)
        assert result.code == 0, (command, result.stderr)
        for name in names:
            assert f"{dbname}.{name}" in result.stdout, (command, result.stdout)
    drop_databases(engine, dbname)
    restored = cli(engine, "restore", "b")
    assert restored.code == 0, restored.stderr
    for name in names:
        assert f"{dbname}.{name}" in restored.stdout + restored.stderr
        assert engine.value(f"SELECT count() FROM {q(dbname)}.{q(name)}") == 10
    verified = cli(engine, "verify", "b", "--restore")
    assert verified.code == 0, verified.stderr
    assert f"{dbname}.[/]bad" in verified.stdout + verified.stderr


def test_negative_partition_ids_round_trip(engine: Engine, dbname: str, cli: Any) -> None:
    """`PARTITION BY k` with k < 0: the partition id is the number, so part names start with '-'
    (`-1_5_5_0`); create refused them as unsafe paths (exit 15), so such a table had no backup."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.t (k Int8, v String) ENGINE = MergeTree PARTITION BY k ORDER BY v"
    )
    engine.sql(f"INSERT INTO {db}.t SELECT toInt8(number) - 3, toString(number) FROM numbers(6)")
    before = fingerprints(engine, [dbname])
    cli(engine, "init")
    created = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    assert created.code == 0, created.stderr
    verified = cli(engine, "verify", "b", "--restore")
    assert verified.code == 0, verified.stdout + verified.stderr
    copy = f"{dbname}_copy"
    restored = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}")
    assert restored.code == 0, restored.stderr
    after = {k.replace(copy, dbname, 1): v for k, v in fingerprints(engine, [copy]).items()}
    assert after == before
    partial = cli(engine, "restore", "b", "--as", f"{dbname}:{dbname}_2", "--partitions=-2")
    assert partial.code == 0, partial.stderr
    assert engine.sql(f"SELECT k, v FROM {q(dbname + '_2')}.t") == [(-2, "1")]
    drop_databases(engine, dbname, copy, f"{dbname}_2")


def test_parts_named_near_the_file_name_limit_are_restored(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """A partition key of ten Int64 columns makes part names of 215+ bytes, which ClickHouse's
    own prefixes (tmp_insert_, ...) fit; casbackup's staging names (~40 bytes of process tag
    before the part name) did not, and every restore of such a table failed (ENAMETOOLONG,
    exit 21). Two parts of one partition differ only at the end of their names."""
    db = q(dbname)
    create_long_part_names(engine, db, (1, 2))
    names = [
        n
        for (n,) in engine.sql(
            f"SELECT name FROM system.parts WHERE database = '{dbname}' AND active"
        )
    ]
    assert len(names) == 2 and min(len(n) for n in names) >= 215
    cli(engine, "init")
    created = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    assert created.code == 0, created.stderr
    copy = f"{dbname}_copy"
    restored = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}")
    assert restored.code == 0, restored.stderr
    assert engine.sql(f"SELECT v FROM {q(copy)}.t ORDER BY v") == [(1,), (2,)]
    verified = cli(engine, "verify", "b", "--restore")
    assert verified.code == 0, verified.stdout + verified.stderr
    drop_databases(engine, dbname, copy)


def test_restore_as_points_buffer_and_merge_tables_at_the_copy(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """Buffer and Merge name their database as an engine argument (a string on 26.x), not as
    `db.table`: a copy restored with --as flushed its buffer into, and merged, the original."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(f"CREATE TABLE {db}.base (k UInt32) ENGINE = MergeTree ORDER BY k")
    engine.sql(f"INSERT INTO {db}.base SELECT number FROM numbers(10)")
    engine.sql(f"CREATE TABLE {db}.merged AS {db}.base ENGINE = Merge({db}, '^base$')")
    engine.sql(
        f"CREATE TABLE {db}.buf AS {db}.base "
        f"ENGINE = Buffer({db}, base, 1, 3600, 3600, 1000000, 1000000, 100000000, 100000000)"
    )
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    copy = f"{dbname}_copy"
    restored = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}")
    assert restored.code == 0, restored.stderr
    engine.sql(f"INSERT INTO {q(copy)}.buf SELECT 100")
    engine.sql(f"OPTIMIZE TABLE {q(copy)}.buf")  # flushes the buffer now
    assert engine.value(f"SELECT count() FROM {db}.base") == 10  # the original is left alone
    assert engine.value(f"SELECT count() FROM {q(copy)}.base") == 11
    assert engine.value(f"SELECT count() FROM {q(copy)}.merged") == 11
    drop_databases(engine, dbname, copy)


def test_a_materialized_view_chosen_without_its_target_table_backs_up(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`tables`/`create --tables db.mv` with the view's TO table left out was exit 70."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(f"CREATE TABLE {db}.src (id UInt64) ENGINE = MergeTree ORDER BY id")
    engine.sql(f"CREATE TABLE {db}.agg (id UInt64) ENGINE = MergeTree ORDER BY id")
    engine.sql(f"CREATE MATERIALIZED VIEW {db}.mv TO {db}.agg AS SELECT id FROM {db}.src")
    cli(engine, "init")
    listed = cli(engine, "tables", "--tables", f"{dbname}.mv", "--json")
    assert listed.code == 0, listed.stderr
    assert [t["table"] for t in listed.json()] == [f"{dbname}.mv"]
    result = cli(engine, "create", "b", "--tables", f"{dbname}.mv")
    assert result.code == 0, result.stderr
    assert [t["name"] for t in cli(engine, "show", "b", "--json").json()["tables"]] == ["mv"]


@pytest.mark.parametrize("mode", ["--partitions", "--data-only"])
def test_a_kept_materialized_views_inner_table_with_data_is_a_conflict(
    engine: Engine, dbname: str, cli: Any, mode: str
) -> None:
    """A view that stays (--partitions, --data-only) keeps its inner table: rows there conflict.

    A source partition lost, the view's copy of it intact: attaching the
    backup's inner-table parts as well counted those rows twice."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.src (d Date, x UInt64) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY x"
    )
    engine.sql(
        f"CREATE MATERIALIZED VIEW {db}.mv ENGINE = MergeTree PARTITION BY toYYYYMM(d) "
        f"ORDER BY x AS SELECT d, x FROM {db}.src"
    )
    engine.sql(
        f"INSERT INTO {db}.src SELECT toDate('2024-01-01') + number % 40, number FROM numbers(100)"
    )
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    if mode == "--data-only":
        engine.sql(f"TRUNCATE TABLE {db}.src")
        args = ["--data-only"]
    else:
        engine.sql(f"ALTER TABLE {db}.src DROP PARTITION 202401")
        args = ["--partitions", "202401"]
    in_view = engine.value(f"SELECT count() FROM {db}.mv")
    refused = cli(engine, "restore", "b", *args)
    assert refused.code == ExitCode.CONFLICT, refused.stderr
    assert ".inner" in refused.stderr and "has data" in refused.stderr, refused.stderr
    assert engine.value(f"SELECT count() FROM {db}.mv") == in_view
    replaced = cli(engine, "restore", "b", *args, "--drop-existing")
    assert replaced.code == 0, replaced.stderr
    assert engine.value(f"SELECT count() FROM {db}.src") == 100
    assert engine.value(f"SELECT count() FROM {db}.mv") == 100


def test_partitions_restore_into_a_live_table_counts_only_those_partitions(
    server_engine: ServerEngine, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written meanwhile into other partitions are not the restore's: not a failure.

    Restoring a lost month into a table that takes inserts (today's
    partition) attached every part and then failed, exit 12, counting the
    inserted rows as its own. (On the server: chdb's one session is the
    restore's while it attaches.)"""
    from casbackup.clickhouse.server import ClickHouseServer

    dbname = "t_live_partitions"
    db = q(dbname)
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    server_engine.sql(f"CREATE DATABASE {db}")
    server_engine.sql(
        f"CREATE TABLE {db}.t (d Date, x UInt64) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY x"
    )
    server_engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % 40, number FROM numbers(100)"
    )
    cli(server_engine, "init")
    assert cli(server_engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    server_engine.sql(f"ALTER TABLE {db}.t DROP PARTITION 202401")
    real = ClickHouseServer.attach_part

    def attach_while_inserting(self: ClickHouseServer, *args: Any, **kwargs: Any) -> None:
        server_engine.sql(f"INSERT INTO {db}.t SELECT toDate('2024-03-01'), 1000")  # live
        real(self, *args, **kwargs)

    monkeypatch.setattr(ClickHouseServer, "attach_part", attach_while_inserting)
    # Another restore of this table (other partitions) is attaching too, merges stopped.
    data_path = server_engine.value(
        f"SELECT data_path FROM system.tables WHERE database = '{dbname}'"
    )
    other = Path(data_path) / "detached" / f"casbackup_merges_paused_{ProcessTag.current()}_ab12"
    other.mkdir(parents=True)
    restored = cli(server_engine, "restore", "b", "--partitions", "202401")
    assert restored.code == 0, restored.stderr
    assert server_engine.value(f"SELECT count() FROM {db}.t WHERE d < '2024-03-01'") == 100
    # This restore left the merges to the other one: still stopped.
    with pytest.raises(Exception, match="Cancelled merging parts"):
        server_engine.sql(f"OPTIMIZE TABLE {db}.t PARTITION 202403 FINAL")
    server_engine.sql(f"SYSTEM START MERGES {db}.t")
    server_engine.sql(f"DROP DATABASE {db}")


def _typed_backup(engine: Engine, dbname: str, cli: Any) -> None:
    """Backup b of ``dbname``: t (d, id, v UInt64, s String), two months of rows, and u."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, id UInt64, v UInt64, s String) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % 40, number, "
        "number * 1000, toString(number) FROM numbers(100)"
    )
    engine.sql(f"CREATE TABLE {db}.u (id UInt64) ENGINE = MergeTree ORDER BY id")
    engine.sql(f"INSERT INTO {db}.u SELECT number FROM numbers(10)")
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0


def _detached(engine: Engine, database: str, table: str) -> list[str]:
    server = server_for(engine)
    try:
        found = server.table(database, table)
        assert found is not None
        return sorted(p.name for p in (Path(found.data_paths[0]) / "detached").glob("*"))
    finally:
        server.close()


@pytest.mark.parametrize(
    "args",
    [(), ("--data-only",), ("--data-only", "--drop-existing"), ("--partitions", "202401")],
    ids=["empty", "data-only", "data-only-drop-existing", "partitions"],
)
def test_a_reused_table_with_another_column_type_is_refused_before_any_change(
    engine: Engine, dbname: str, cli: Any, args: tuple[str, ...]
) -> None:
    """ATTACH PART took UInt64 parts into a String column: 18.16 read garbage strings, exit 0."""
    db = q(dbname)
    _typed_backup(engine, dbname, cli)
    engine.sql(f"DROP TABLE {db}.t")
    engine.sql(f"DROP TABLE {db}.u")  # restored by the plain restore, if it went ahead
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, id UInt64, v String, s String) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    if "--drop-existing" in args or "--partitions" in args:  # rows the restore must not touch
        engine.sql(f"INSERT INTO {db}.t SELECT toDate('2024-03-01'), 1, 'live', 'x'")
    before = engine.sql(f"SELECT name FROM system.parts WHERE database = '{dbname}' AND active")
    tables = ("--tables", f"{dbname}.t") if "--data-only" in args else ()
    refused = cli(engine, "restore", "b", *args, *tables)
    assert refused.code == ExitCode.CONFLICT, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line == (
        f"casbackup: error: {dbname}.t exists with column v of type String, but the backup's "
        "parts hold v as UInt64: ATTACH would read them as the table's type; nothing was "
        "changed (use --drop-existing to restore the backup's definition, --as to restore "
        "into another database, or --allow-type-change on a ClickHouse release that converts "
        "them as after MODIFY COLUMN, e.g. 26.x)"
    )
    assert engine.sql(f"SELECT name FROM system.parts WHERE database = '{dbname}' AND active") == (
        before
    )
    assert engine.value(f"SELECT count() FROM {db}.t") == len(before)
    assert _detached(engine, dbname, "t") == []
    assert engine.sql(f"SELECT name FROM system.tables WHERE database = '{dbname}'") == [("t",)]

    replaced = cli(engine, "restore", "b", "--drop-existing")
    assert replaced.code == 0, replaced.stderr
    assert engine.value(f"SELECT toTypeName(v) FROM {db}.t LIMIT 1") == "UInt64"
    assert engine.value(f"SELECT sum(v) FROM {db}.t") == 1000 * 99 * 100 // 2


def test_allow_type_change_attaches_parts_of_another_column_type(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """The operator's choice: 26.x converts UInt64 parts in a String column as after MODIFY COLUMN.

    (18.16 attaches them too, and reads their bytes as strings: garbage, as
    docs/operations.md says; only the row count is asserted there.)
    """
    db = q(dbname)
    _typed_backup(engine, dbname, cli)
    engine.sql(f"DROP TABLE {db}.t")
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, id UInt64, v String, s String) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    restored = cli(
        engine, "restore", "b", "--data-only", "--tables", f"{dbname}.t", "--allow-type-change"
    )
    assert restored.code == 0, restored.stderr
    assert engine.value(f"SELECT count() FROM {db}.t") == 100
    if engine.name == "chdb":
        assert engine.value(f"SELECT v FROM {db}.t WHERE id = 7") == "7000"


def test_a_reused_table_of_compatible_columns_is_restored(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """Same types, a column added and one dropped since the backup: ATTACH copes, as before."""
    db = q(dbname)
    _typed_backup(engine, dbname, cli)
    engine.sql(f"DROP TABLE {db}.t")
    engine.sql(f"TRUNCATE TABLE {db}.u")
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, id UInt64, v UInt64, extra UInt8 DEFAULT 7) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    restored = cli(engine, "restore", "b")
    assert restored.code == 0, restored.stderr
    assert engine.sql(f"SELECT count(), sum(v), min(extra), max(extra) FROM {db}.t") == [
        (100, 1000 * 99 * 100 // 2, 7, 7)
    ]
    assert engine.value(f"SELECT count() FROM {db}.u") == 10
    assert _detached(engine, dbname, "t") == []


def test_parts_a_metadata_only_alter_left_behind_restore_into_the_altered_table(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """ALTER MODIFY COLUMN adding an Enum value, or changing a DateTime's time zone, rewrites no
    part on 26.x: its parts keep the old type in columns.txt. Restoring them into the table they
    came from (or one of its definition) was refused as a type conflict, though ATTACH reads
    them as they are, as ClickHouse does after such an ALTER."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    old = "d Date, id UInt64, e Enum8('a' = 1), ts DateTime, n Array(Nullable(Enum16('x' = 1)))"
    altered = [
        "e Enum8('a' = 1, 'b' = 2)",
        "ts DateTime('UTC')",
        "n Array(Nullable(Enum16('x' = 1, 'y' = 2)))",
    ]
    # Further values and another zone again, for the table the restore reuses: on 18.16, whose
    # ALTER rewrote the parts' columns.txt, too.
    further = [
        "e Enum8('a' = 1, 'b' = 2, 'c' = 3)",
        "ts DateTime('Asia/Tokyo')",
        "n Array(Nullable(Enum16('x' = 1, 'y' = 2, 'z' = -3)))",
    ]
    engine.sql(
        f"CREATE TABLE {db}.t ({old}) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % 40, number, 'a', "
        "toDateTime(1700000000 + number, 'UTC'), ['x'] FROM numbers(100)"
    )
    for column in altered:
        engine.sql(f"ALTER TABLE {db}.t MODIFY COLUMN {column}")
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.t").code == 0
    expected = engine.sql(f"SELECT id, e, toUnixTimestamp(ts), n FROM {db}.t ORDER BY id")

    into_live = cli(engine, "restore", "b", "--partitions", "202401", "--drop-existing")
    assert into_live.code == 0, into_live.stderr
    engine.sql(f"DROP TABLE {db}.t")
    engine.sql(
        f"CREATE TABLE {db}.t (d Date, id UInt64, {', '.join(further)}) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    into_empty = cli(engine, "restore", "b")
    assert into_empty.code == 0, into_empty.stderr
    assert engine.sql(f"SELECT id, e, toUnixTimestamp(ts), n FROM {db}.t ORDER BY id") == expected


@pytest.mark.parametrize("batch", ["default", "one file"])
def test_every_distinct_columns_txt_of_a_table_is_compared(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch, batch: str
) -> None:
    """Parts of one columns.txt are compared once; one of another columns.txt still is.

    Also when each is read in a batch of its own (``COLUMNS_TXT_BATCH``, which
    bounds the memory a hostile manifest of many large ones could take).
    """
    if batch == "one file":
        monkeypatch.setattr(restore_module, "COLUMNS_TXT_BATCH", 1)
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(f"CREATE TABLE {db}.t (id UInt64) ENGINE = MergeTree ORDER BY id")
    engine.sql(f"SYSTEM STOP MERGES {db}.t")
    for i in range(3):
        engine.sql(f"INSERT INTO {db}.t SELECT {i}")
    engine.sql(f"ALTER TABLE {db}.t ADD COLUMN v UInt64")  # the old parts keep their columns.txt
    engine.sql(f"INSERT INTO {db}.t SELECT 9, 9")
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.t").code == 0
    engine.sql(f"DROP TABLE {db}.t")
    engine.sql(f"CREATE TABLE {db}.t (id UInt64, v String) ENGINE = MergeTree ORDER BY id")
    refused = cli(engine, "restore", "b")
    assert refused.code == ExitCode.CONFLICT, refused.stderr
    assert "column v of type String, but the backup's parts hold v as UInt64" in refused.stderr
