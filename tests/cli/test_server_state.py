"""Beyond table data: configs, access control, functions, partitions, dependency-aware restore.

What each engine can really exercise (see docs/operations.md, "Access control"):
18.16 has no SQL access control (it is reported, not failed); the chdb build
captures SHOW ACCESS under a config with access_management, but cannot store
SQL-created users, so restoring them is reported per object; an access
directory of *.sql files is round-tripped as files on both.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casbackup import interrupts
from casbackup.errors import ExitCode
from casbackup.process import ProcessTag
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from tests.cli.test_incremental import mutate
from tests.cli.test_lifecycle import another_hosts_gc_repacks
from tests.clickhouse.schema import fingerprints, q
from tests.engines import ChdbEngine, Engine, ServerEngine
from tests.helpers import write_tree

CASBACKUP = [sys.executable, "-m", "casbackup"]


def config_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.xml": b"<clickhouse><tcp_port>9000</tcp_port></clickhouse>\n",
        "config.d/storage.xml": b"<clickhouse><storage_configuration/></clickhouse>\n",
        "users.d/alice.xml": b"<clickhouse><users><alice><password>secret</password></alice></users></clickhouse>\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "config.d" / "linked.xml").symlink_to(root / "config.xml")
    files["config.d/linked.xml"] = files["config.xml"]  # a symlinked file travels as its content
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def backed_up_with_configs(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> dict[str, bytes]:
    """Backup "b" of a small table with a config tree beside it; returns the tree's files."""
    expected, created = create_with_configs(engine, dbname, cli, tmp_path)
    assert created.code == 0, created.stderr
    return expected


def create_c(engine: Engine, dbname: str, cli: Any, configs: Path) -> Any:
    """`create c` of the database's tables with the config tree at ``configs``."""
    return cli(
        engine,
        "create",
        "c",
        "--tables",
        f"{dbname}.*",
        "--configs",
        "--configs-path",
        str(configs),
    )


def create_with_configs(
    engine: Engine,
    dbname: str,
    cli: Any,
    tmp_path: Path,
    spoil: Callable[[Path], None] = lambda configs: None,
) -> tuple[dict[str, bytes], Any]:
    """`create b` of a small table and a config tree (``spoil`` adds to it); the tree's stored
    files and the command's result."""
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(f"CREATE TABLE {q(dbname)}.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    configs = tmp_path / "etc-clickhouse"
    expected = config_tree(configs)
    spoil(configs)
    cli(engine, "init")
    created = cli(
        engine,
        "create",
        "b",
        "--tables",
        f"{dbname}.*",
        "--configs",
        "--configs-path",
        str(configs),
    )
    return expected, created


def restore_configs(engine: Engine, cli: Any, staging: Path, *extra: str) -> Any:
    """Backup b's config files (only) restored under ``staging``."""
    return cli(
        engine, "restore", "b", "--configs", "--files-target", str(staging), "--no-tables", *extra
    )


def test_a_config_restore_never_writes_through_a_symlinked_directory(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A target whose config.d is a link to a shared directory: its files must not land there."""
    backed_up_with_configs(engine, dbname, cli, tmp_path)
    staging, shared = tmp_path / "staging", tmp_path / "shared"
    shared.mkdir()
    (staging / "configs").mkdir(parents=True)
    (staging / "configs" / "config.d").symlink_to(shared)
    for extra in ([], ["--overwrite"]):
        refused = restore_configs(engine, cli, staging, *extra)
        assert refused.code == ExitCode.CONFLICT
        assert refused.stderr == (
            f"casbackup: error: {staging / 'configs' / 'config.d'} is a symbolic link: restoring "
            f"config.d/linked.xml there would write outside {staging / 'configs'} (restore into "
            "an empty --files-target instead); nothing was changed\n"
        )
    assert list(shared.iterdir()) == [] and sorted(
        p.name for p in (staging / "configs").iterdir()
    ) == ["config.d"]


def test_a_config_restore_never_writes_through_a_symlinked_configs_directory(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """The configs directory under --files-target was followed when it was a link: the files
    landed in the link's target, outside --files-target, though operations.md says a directory
    of the target that is a symbolic link is refused."""
    backed_up_with_configs(engine, dbname, cli, tmp_path)
    staging, shared = tmp_path / "staging", tmp_path / "shared"
    shared.mkdir()
    staging.mkdir()
    (staging / "configs").symlink_to(shared)
    for extra in ([], ["--overwrite"]):
        refused = restore_configs(engine, cli, staging, *extra)
        assert refused.code == ExitCode.CONFLICT, refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("casbackup: error:")
        assert f"{staging / 'configs'} is a symbolic link" in refused.stderr
    assert list(shared.iterdir()) == []


def test_what_a_config_backup_cannot_store_is_said(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """Skipped silently before (a symlinked users.d, a fifo), or exit 70 (a name not UTF-8)."""
    configs = tmp_path / "etc-clickhouse"

    def spoil(configs: Path) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "inner.xml").write_text("<clickhouse/>")
        (configs / "linked.d").symlink_to(elsewhere)
        (configs / "dangling.xml").symlink_to(tmp_path / "nowhere")
        os.mkfifo(configs / "fifo")
        with open(os.fsencode(configs) + b"/bad\xffname.xml", "wb") as handle:
            handle.write(b"x")

    expected, created = create_with_configs(engine, dbname, cli, tmp_path, spoil)
    assert created.code == ExitCode.WARNING, created.stderr
    said = " ".join(created.stderr.split())
    for line in (
        f"not stored: {configs / 'linked.d'} (a symlinked directory)",
        f"not stored: {configs / 'dangling.xml'} (a dangling symlink)",
        f"not stored: {configs / 'fifo'} (not a regular file)",
        f"not stored: {configs}/bad\\xffname.xml (its name is not UTF-8)",
    ):
        assert line in said
    staging = tmp_path / "staging"
    assert restore_configs(engine, cli, staging).code == 0
    assert tree(staging / "configs") == expected


def test_config_files_round_trip_to_a_staging_directory(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    expected = backed_up_with_configs(engine, dbname, cli, tmp_path)
    missing = cli(engine, "create", "c", "--configs", "--configs-path", str(tmp_path / "nowhere"))
    assert missing.code == ExitCode.USAGE
    assert missing.stderr.strip().endswith(
        f"--configs-path: {tmp_path / 'nowhere'} is not a directory"
    )
    staging = tmp_path / "staging"
    restored = cli(
        engine, "restore", "b", "--configs", "--files-target", str(staging), "--no-tables"
    )
    assert restored.code == 0, restored.stderr
    assert tree(staging / "configs") == expected
    assert stat.S_IMODE((staging / "configs").stat().st_mode) == 0o700  # users.xml's hashes
    assert "restart ClickHouse" in restored.stderr
    assert "secret" not in restored.stdout + restored.stderr  # contents are never printed
    again = cli(engine, "restore", "b", "--configs", "--files-target", str(staging), "--no-tables")
    assert again.code == ExitCode.CONFLICT and "--overwrite" in again.stderr
    (staging / "configs" / "config.xml").write_text("changed")
    forced = restore_configs(engine, cli, staging, "--overwrite")
    assert forced.code == 0 and tree(staging / "configs") == expected


def test_rbac_on_18_16_is_reported_not_failed(server_engine: ServerEngine, cli: Any) -> None:
    server_engine.sql("CREATE DATABASE IF NOT EXISTS t_rbac18")
    server_engine.sql(
        "CREATE TABLE IF NOT EXISTS t_rbac18.t (x UInt8) ENGINE = MergeTree ORDER BY x"
    )
    cli(server_engine, "init")
    result = cli(server_engine, "create", "b", "--tables", "t_rbac18.*", "--rbac", "--json")
    assert result.code == 0, result.stderr
    assert "has no SQL access control" in result.stderr and "users.xml" in result.stderr
    # Restored with --rbac, it is not taken for a backup made without it.
    restored = cli(server_engine, "restore", "b", "--no-tables", "--rbac")
    assert restored.code == 0, restored.stderr
    assert "users live in users.xml and come back with --configs" in restored.stderr
    server_engine.sql("DROP DATABASE t_rbac18")


ANALYST_HASH = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
USERS_XML = """<clickhouse>
  <profiles><default/><readonly><readonly>1</readonly></readonly></profiles>
  <users>
    <default><password></password><networks><ip>::/0</ip></networks><profile>default</profile>
      <quota>default</quota><access_management>1</access_management>
      <named_collection_control>1</named_collection_control>
      <show_named_collections_secrets>1</show_named_collections_secrets></default>
    <analyst><password_sha256_hex>2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b</password_sha256_hex>
      <networks><ip>127.0.0.1</ip></networks><profile>readonly</profile><quota>default</quota></analyst>
  </users>
  <quotas><default/></quotas>
</clickhouse>
"""


def write_access_config(root: Path) -> Path:
    """users.xml (USERS_XML) and a chdb config.xml naming it under ``root``; the config's path.

    Access management on, secrets shown: what `--rbac` needs to capture entities.
    """
    (root / "users.xml").write_text(USERS_XML)
    config = root / "config.xml"
    config.write_text(
        f"<clickhouse><users_config>{root / 'users.xml'}</users_config>"
        "<display_secrets_in_show_and_select>1</display_secrets_in_show_and_select>"
        "</clickhouse>"
    )
    return config


class ConfiguredChdb:
    """casbackup and SQL in child processes against a chdb data directory with a config file.

    Child processes: the engine needs a config file, and chdb allows one
    engine (one data directory) per process.
    """

    def __init__(self, root: Path) -> None:
        pytest.importorskip("chdb")
        self.root = root
        self.config = write_access_config(root)
        url = f"chdb://{root / 'data'}?config={self.config}"
        self.base = [*CASBACKUP, "--repo", str(root / "repo"), "--clickhouse", url]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "CASBACKUP_CONFIG": "/dev/null"},
        )

    def sql(self, statement: str) -> str:
        return subprocess.run(
            [
                sys.executable,
                "tools/chdb_sql.py",
                "--config-file",
                str(self.config),
                str(self.root / "data"),
                statement,
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        ).stdout


def test_rbac_capture_and_access_directory_on_chdb(tmp_path: Path) -> None:
    """SHOW ACCESS under access_management; an access directory of *.sql files round-trips as files."""
    run = ConfiguredChdb(tmp_path)
    access = tmp_path / "access"
    access.mkdir()
    (access / "users.list").write_bytes(b"\x01binary index")
    (access / "6f0a0b7c.sql").write_text("ATTACH USER ops IDENTIFIED WITH sha256_hash BY 'ab';\n")
    run.sql("CREATE DATABASE app")
    run.sql("CREATE TABLE app.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    assert run("init").returncode == 0
    created = run("create", "b", "--tables", "app.*", "--rbac", "--access-path", str(access))
    assert created.returncode == 0, created.stderr
    shown = run("show", "b", "--json")
    document = json.loads(shown.stdout)
    printed = " ".join(o["create_sql"] for o in document["access"])
    assert "CREATE USER analyst" in printed and "CREATE SETTINGS PROFILE `readonly`" in printed
    assert "GRANT" in printed and {o["storage"] for o in document["access"] if o["name"]} == {
        "users_xml"
    }
    # The password hash is captured (the config allows secrets to be shown)...
    manifest = Repository.open(LocalStore(tmp_path / "repo")).read_manifest("b")
    stored = " ".join(o.create_sql for o in manifest.access)
    assert f"sha256_hash BY '{ANALYST_HASH.upper()}'" in stored
    # ...and never printed.
    assert ANALYST_HASH.upper() not in shown.stdout.upper() and "[HIDDEN]" in printed
    assert ANALYST_HASH.upper() not in (created.stdout + created.stderr).upper()

    staging = tmp_path / "staging"
    skipped = run("restore", "b", "--no-tables", "--rbac", "--files-target", str(staging))
    assert skipped.returncode == 0, skipped.stderr  # users come from users.xml: they exist, skipped
    assert tree(staging / "access") == tree(access)
    replaced = run(
        "restore",
        "b",
        "--no-tables",
        "--rbac",
        "--on-existing",
        "replace",
        "--files-target",
        str(tmp_path / "staging2"),
    )
    assert (
        replaced.returncode == ExitCode.WARNING
    )  # this engine cannot store SQL users: said per object
    assert "could not restore user analyst" in replaced.stderr
    refused = run(
        "restore",
        "b",
        "--no-tables",
        "--rbac",
        "--on-existing",
        "fail",
        "--files-target",
        str(tmp_path / "staging3"),
    )
    assert refused.returncode == ExitCode.CONFLICT and "user analyst" in refused.stderr


def test_functions_come_back_before_the_views_that_use_them(
    chdb_engine: ChdbEngine, cli: Any
) -> None:
    db = "t_functions"
    chdb_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    chdb_engine.sql("DROP FUNCTION IF EXISTS cas_double")
    chdb_engine.sql("CREATE FUNCTION cas_double AS (x) -> x * 2")
    chdb_engine.sql(f"CREATE DATABASE {db}")
    chdb_engine.sql(f"CREATE TABLE {db}.t (x UInt32) ENGINE = MergeTree ORDER BY x")
    chdb_engine.sql(f"INSERT INTO {db}.t SELECT number FROM numbers(10)")
    chdb_engine.sql(f"CREATE VIEW {db}.doubled AS SELECT cas_double(x) AS y FROM {db}.t")
    cli(chdb_engine, "init")
    assert cli(chdb_engine, "create", "b", "--tables", f"{db}.*").code == 0
    chdb_engine.sql(f"DROP DATABASE {db}")
    chdb_engine.sql("DROP FUNCTION cas_double")
    result = cli(chdb_engine, "restore", "b", "--json")
    assert result.code == 0, result.stderr
    assert "function cas_double" in result.json()["objects"]
    assert chdb_engine.value(f"SELECT sum(y) FROM {db}.doubled") == 90
    chdb_engine.sql(f"DROP DATABASE {db}")
    chdb_engine.sql("DROP FUNCTION cas_double")


def test_materialized_view_and_dictionary_under_another_database(
    engine: Engine, dbname: str, cli: Any
) -> None:
    copy = f"{dbname}_copy"
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(
        f"CREATE TABLE {q(dbname)}.users (id UInt64, name String) ENGINE = MergeTree ORDER BY id"
    )
    engine.sql(
        f"INSERT INTO {q(dbname)}.users SELECT number, concat('user', toString(number)) FROM numbers(5)"
    )
    engine.sql(
        f"CREATE TABLE {q(dbname)}.events (id UInt64, user UInt64) ENGINE = MergeTree ORDER BY id"
    )
    engine.sql(
        f"CREATE TABLE {q(dbname)}.per_user (user UInt64, n UInt64) ENGINE = SummingMergeTree ORDER BY user"
    )
    engine.sql(
        f"CREATE MATERIALIZED VIEW {q(dbname)}.mv TO {q(dbname)}.per_user "
        f"AS SELECT user, count() AS n FROM {q(dbname)}.events GROUP BY user"
    )
    if engine.modern:
        engine.sql(
            f"CREATE DICTIONARY {q(dbname)}.names (id UInt64, name String) PRIMARY KEY id "
            f"SOURCE(CLICKHOUSE(TABLE 'users' DB '{dbname}')) LAYOUT(FLAT()) LIFETIME(0)"
        )
    engine.sql(f"INSERT INTO {q(dbname)}.events SELECT number, number % 5 FROM numbers(100)")
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    result = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}")
    assert result.code == 0, result.stderr
    # The copy's view writes into the copy's target...
    engine.sql(f"INSERT INTO {q(copy)}.events SELECT 1000 + number, 4 FROM numbers(10)")
    assert engine.value(f"SELECT sum(n) FROM {q(copy)}.per_user WHERE user = 4") == 30
    assert engine.value(f"SELECT sum(n) FROM {q(dbname)}.per_user WHERE user = 4") == 20
    if engine.modern:  # ...and the copy's dictionary reads the copy's table, not the original.
        engine.sql(f"TRUNCATE TABLE {q(dbname)}.users")
        assert engine.value(f"SELECT dictGet('{copy}.names', 'name', toUInt64(3))") == "user3"


def test_partition_limited_backup_and_restore(engine: Engine, dbname: str, cli: Any) -> None:
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(
        f"CREATE TABLE {q(dbname)}.t (d Date, id UInt64, x UInt64) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
    )
    engine.sql(
        f"INSERT INTO {q(dbname)}.t SELECT toDate('2024-01-01') + number % 90, number, number "
        "FROM numbers(9000)"
    )
    cli(engine, "init")
    only_feb = cli(
        engine, "create", "feb", "--tables", f"{dbname}.*", "--partitions", "202402", "--json"
    )
    assert only_feb.code == 0, only_feb.stderr
    parts = cli(engine, "show", "feb", "--json").json()["tables"][0]["parts"]
    assert parts and {p["partition_id"] for p in parts} == {"202402"}
    assert cli(engine, "restore", "feb", "--as", f"{dbname}:{dbname}_feb").code == 0
    assert engine.sql(f"SELECT DISTINCT toYYYYMM(d) FROM {q(dbname + '_feb')}.t") == [(202402,)]

    assert cli(engine, "create", "full", "--tables", f"{dbname}.*").code == 0
    january = engine.value(f"SELECT sum(x) FROM {q(dbname)}.t WHERE toYYYYMM(d) = 202401")
    engine.sql(f"ALTER TABLE {q(dbname)}.t DROP PARTITION 202401")
    before = engine.value(f"SELECT sum(x) FROM {q(dbname)}.t")
    restored = cli(
        engine, "restore", "full", "--partitions", "202401"
    )  # into the table that has the rest
    assert restored.code == 0, restored.stderr
    assert engine.value(f"SELECT sum(x) FROM {q(dbname)}.t") == before + january
    clash = cli(engine, "restore", "full", "--partitions", "202402")
    assert clash.code == ExitCode.CONFLICT and "has data in those partitions" in clash.stderr
    mutate(engine, f"ALTER TABLE {q(dbname)}.t UPDATE x = 0 WHERE toYYYYMM(d) = 202402")
    assert engine.value(f"SELECT sum(x) FROM {q(dbname)}.t") < sum(range(9000))
    replaced = cli(engine, "restore", "full", "--partitions", "202402", "--drop-existing")
    assert replaced.code == 0, replaced.stderr
    assert fingerprints(engine, [dbname])[f"{dbname}.t"].rows == 9000
    assert engine.value(f"SELECT sum(x) FROM {q(dbname)}.t") == sum(range(9000))


def test_scoped_partitions_leave_other_tables_whole_and_a_spec_choosing_nothing_warns(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """operations.md: `create --partitions` backs up other tables whole, unless scoped."""
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    for table in ("a", "c"):
        engine.sql(
            f"CREATE TABLE {q(dbname)}.{table} (d Date, id UInt64) "
            "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
        )
        engine.sql(
            f"INSERT INTO {q(dbname)}.{table} SELECT toDate('2024-01-01') + number % 60, number "
            "FROM numbers(6000)"
        )
    cli(engine, "init")
    created = cli(
        engine,
        "create",
        "b",
        "--tables",
        f"{dbname}.*",
        "--partitions",
        f"{dbname}.c:202402",
        "--json",
    )
    assert created.code == 0, created.stderr
    rows = {t["table"]: t["rows"] for t in created.json()["tables"]}
    assert rows == {f"{dbname}.a": 6000, f"{dbname}.c": 6000 * 29 // 60}

    typo = cli(engine, "create", "b2", "--tables", f"{dbname}.*", "--partitions", "20240")
    assert typo.code == ExitCode.WARNING
    assert "--partitions '20240' chose no partition of the tables backed up" in typo.stderr

    # Restore brings back only what a spec names: the other tables' rows stay as they are,
    # even with --drop-existing (a review found them rolled back to the backup).
    engine.sql(
        f"INSERT INTO {q(dbname)}.c SELECT toDate('2024-02-01'), 100000 + number FROM numbers(7)"
    )
    rows_c = engine.value(f"SELECT count() FROM {q(dbname)}.c")
    engine.sql(f"ALTER TABLE {q(dbname)}.a DROP PARTITION 202401")
    restored = cli(engine, "restore", "b", "--partitions", f"{dbname}.a:202401", "--drop-existing")
    assert restored.code == 0, restored.stderr
    assert engine.value(f"SELECT count() FROM {q(dbname)}.a") == 6000
    assert engine.value(f"SELECT count() FROM {q(dbname)}.c") == rows_c
    copy = f"{dbname}_copy"
    nothing = cli(engine, "restore", "b", "--as", f"{dbname}:{copy}", "--partitions", "202403")
    assert nothing.code == ExitCode.WARNING
    assert "--partitions '202403' chose no partition of the tables restored" in nothing.stderr


def test_partitions_by_value_as_operations_md_writes_them(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """`--partitions "'eu'"` and `"('eu', 3)"`: both engines print such values as `eu` and
    `('eu',3)` in system.parts, and those forms chose nothing (exit 1, nothing restored)."""
    db = q(dbname)
    engine.sql(f"CREATE DATABASE {db}")
    engine.sql(
        f"CREATE TABLE {db}.s (r String, v UInt8) ENGINE = MergeTree PARTITION BY r ORDER BY v"
    )
    engine.sql(
        f"INSERT INTO {db}.s SELECT 'eu', 1 UNION ALL SELECT 'a/b', 2 UNION ALL SELECT 'it''s', 3"
    )
    engine.sql(
        f"CREATE TABLE {db}.t (r String, n Int16, v UInt8) "
        "ENGINE = MergeTree PARTITION BY (r, n) ORDER BY v"
    )
    engine.sql(f"INSERT INTO {db}.t SELECT 'eu', 3, 1 UNION ALL SELECT 'us, x', -4, 2")
    cli(engine, "init")
    created = cli(
        engine, "create", "b", "--tables", f"{dbname}.*", "--partitions", "'eu',('eu', 3)"
    )
    assert created.code == 0, created.stderr
    assert engine.sql(f"SELECT count() FROM {db}.s") == [(3,)]  # the backup holds less
    assert [t["rows"] for t in cli(engine, "show", "b", "--json").json()["tables"]] == [1, 1]
    assert cli(engine, "create", "full", "--tables", f"{dbname}.*").code == 0
    for spec, table, rows in (
        ("'a/b'", "s", [("a/b", 2)]),
        ("'it\\'s'", "s", [("it's", 3)]),
        ("('us, x', -4)", "t", [("us, x", -4, 2)]),
    ):
        copy = f"{dbname}_copy"
        drop = f"DROP DATABASE IF EXISTS {q(copy)}"
        engine.sql(drop)
        restored = cli(engine, "restore", "full", "--as", f"{dbname}:{copy}", "--partitions", spec)
        assert restored.code == 0, (spec, restored.stderr)
        assert engine.sql(f"SELECT * FROM {q(copy)}.{table}") == rows
        engine.sql(drop)


def test_ignore_dependencies_restores_what_it_can(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    engine.sql(f"CREATE DATABASE {q(dbname)}")
    engine.sql(f"CREATE TABLE {q(dbname)}.base (x UInt8) ENGINE = MergeTree ORDER BY x")
    engine.sql(f"INSERT INTO {q(dbname)}.base SELECT 7")
    outside = f"{dbname}_dicts"
    if engine.modern:
        # The modern engine creates views without checking their sources, but
        # not a table whose default reads a dictionary it lacks.
        engine.sql(f"CREATE DATABASE {q(outside)}")
        engine.sql(
            f"CREATE DICTIONARY {q(outside)}.d (x UInt64, y UInt64) PRIMARY KEY x "
            f"SOURCE(CLICKHOUSE(TABLE 'base' DB '{dbname}')) LAYOUT(FLAT()) LIFETIME(0)"
        )
        engine.sql(
            f"CREATE TABLE {q(dbname)}.v (x UInt64, y UInt64 DEFAULT "
            f"dictGet('{outside}.d', 'y', x)) ENGINE = MergeTree ORDER BY x"
        )
    else:
        engine.sql(f"CREATE DATABASE {q(outside)}")
        engine.sql(f"CREATE TABLE {q(outside)}.other (x UInt8) ENGINE = MergeTree ORDER BY x")
        engine.sql(f"CREATE VIEW {q(dbname)}.v AS SELECT x FROM {q(outside)}.other")
    cli(engine, "init")
    created = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    assert created.code == 0, created.stderr
    # What v needs is not in the backup, and gone.
    relaxed = " SETTINGS check_table_dependencies = 0" if engine.modern else ""
    engine.sql(f"DROP DATABASE {q(outside)}{relaxed}")
    target = f"{dbname}_elsewhere"
    stopped = cli(engine, "restore", "b", "--as", f"{dbname}:{target}")
    assert stopped.code == ExitCode.CLICKHOUSE_QUERY and f"{target}.v" in stopped.stderr
    # The error says what the failed restore left and how to go on (a DR drill on a new
    # host stopped here on a Distributed table whose cluster was still in the staged configs).
    assert "created, still empty: no data was attached" in stopped.stderr
    assert "restore b --no-tables --configs" in stopped.stderr
    assert "--drop-existing" in stopped.stderr and "--ignore-dependencies" in stopped.stderr
    assert engine.value(f"SELECT count() FROM {q(target)}.base") == 0
    engine.sql(f"DROP DATABASE IF EXISTS {q(target)}")
    # With --configs, the config files are staged before the first table: the server's
    # missing piece may be in them.
    configs = tmp_path / "configs"
    write_tree(configs, {"config.d/cluster.xml": b"<clickhouse/>"})
    assert create_c(engine, dbname, cli, configs).code == 0
    staging = tmp_path / "staging"
    stopped = cli(
        engine,
        "restore",
        "c",
        "--as",
        f"{dbname}:{target}",
        "--configs",
        "--files-target",
        str(staging),
    )
    assert stopped.code == ExitCode.CLICKHOUSE_QUERY, stopped.stderr
    assert f"the backup's are staged in {staging / 'configs'}" in stopped.stderr
    assert tree(staging / "configs") == tree(configs)
    engine.sql(f"DROP DATABASE IF EXISTS {q(target)}")
    carried_on = cli(engine, "restore", "b", "--as", f"{dbname}:{target}", "--ignore-dependencies")
    assert carried_on.code == ExitCode.WARNING, carried_on.stderr
    assert f"not created {target}.v" in carried_on.stderr
    assert engine.value(f"SELECT sum(x) FROM {q(target)}.base") == 7


def test_named_collections_round_trip_on_chdb(tmp_path: Path) -> None:
    run = ConfiguredChdb(tmp_path)
    run.sql("CREATE DATABASE app")
    run.sql("CREATE TABLE app.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    run.sql("CREATE NAMED COLLECTION cas_source AS host = 'db.example', port = 9000")
    assert run("init").returncode == 0
    created = run("create", "b", "--tables", "app.*")
    assert created.returncode == 0, created.stderr
    assert "db.example" not in created.stdout + created.stderr
    run.sql("DROP NAMED COLLECTION cas_source")
    run.sql("DROP DATABASE app")
    restored = run("restore", "b", "--json")
    assert restored.returncode == 0, restored.stderr
    assert "named collection cas_source" in json.loads(restored.stdout)["objects"]
    shown = run.sql(
        "SELECT collection FROM system.named_collections WHERE name = 'cas_source' "
        "SETTINGS format_display_secrets_in_show_and_select = 1"
    )
    assert "db.example" in shown and "9000" in shown


def test_named_collection_with_hidden_values_is_a_warning(
    chdb_engine: ChdbEngine, cli: Any
) -> None:
    """Without the right to see its values, a collection would come back as placeholders: not stored."""
    db = "t_hidden_collection"
    chdb_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    chdb_engine.sql(f"CREATE DATABASE {db}")
    chdb_engine.sql(f"CREATE TABLE {db}.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    chdb_engine.sql("CREATE NAMED COLLECTION cas_hidden AS host = 'h'")
    try:
        cli(chdb_engine, "init")
        result = cli(chdb_engine, "create", "b", "--tables", f"{db}.*")
        assert result.code == ExitCode.WARNING
        assert "named collection cas_hidden not captured" in result.stderr
        shown = cli(chdb_engine, "show", "b", "--json").json()
        assert shown["named_collections"] == []
    finally:
        chdb_engine.sql("DROP NAMED COLLECTION cas_hidden")
        chdb_engine.sql(f"DROP DATABASE {db}")


def test_a_failed_config_restore_leaves_no_half_written_files(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 21, and the next attempt needs no --overwrite: the files it had begun are gone."""
    expected = backed_up_with_configs(engine, dbname, cli, tmp_path)
    staging = tmp_path / "staging"
    real_pwrite = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    failed = cli(engine, "restore", "b", "--configs", "--files-target", str(staging), "--no-tables")
    assert failed.code == ExitCode.TARGET_FILES, failed.stderr
    assert failed.stderr.strip().endswith(": No space left on device")
    assert tree(staging) == {}
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    again = cli(engine, "restore", "b", "--configs", "--files-target", str(staging), "--no-tables")
    assert again.code == 0, again.stderr
    assert tree(staging / "configs") == expected


@pytest.mark.parametrize("stop", ["sigterm", "disk full"])
def test_an_interrupted_overwrite_leaves_every_file_old_or_restored(
    engine: Engine,
    dbname: str,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop: str,
) -> None:
    """restore --configs --overwrite into a live directory, stopped mid-write: the live files stay."""
    expected = backed_up_with_configs(engine, dbname, cli, tmp_path)
    staging = tmp_path / "live"
    live = {rel: b"live " + data for rel, data in expected.items() if rel != "config.d/linked.xml"}
    for rel, data in live.items():
        (staging / "configs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / "configs" / rel).write_bytes(data)
    real_pwrite = os.pwrite

    def stopped(fd: int, data: Any, offset: int) -> int:
        if stop == "sigterm":
            raise interrupts.SignalReceived(signal.SIGTERM)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", stopped)
    failed = restore_configs(engine, cli, staging, "--overwrite")
    assert failed.code == (ExitCode.INTERRUPTED if stop == "sigterm" else ExitCode.TARGET_FILES), (
        failed.stderr
    )
    assert tree(staging / "configs") == live  # not one file lost, none half-written
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    again = restore_configs(engine, cli, staging, "--overwrite")
    assert again.code == 0, again.stderr
    assert tree(staging / "configs") == expected


def test_a_config_restore_removes_what_a_killed_one_left_in_its_directories(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """SIGKILL leaves hidden temporaries beside the destinations; only a dead process's go."""
    expected = backed_up_with_configs(engine, dbname, cli, tmp_path)
    config_d = tmp_path / "staging" / "configs" / "config.d"
    config_d.mkdir(parents=True)
    dead = config_d / ".casbackup_tmp_999999999_1_ab12cd34_storage.xml"  # no such pid
    live = config_d / f".casbackup_tmp_{ProcessTag.current()}_ab12cd34_storage.xml"
    unknown = config_d / ".casbackup_tmp_ab12cd34_storage.xml"  # no process in its name
    for path in (dead, live, unknown):
        path.write_bytes(b"<clickhouse><half")
    restored = restore_configs(engine, cli, tmp_path / "staging")
    assert restored.code == 0, restored.stderr
    assert tree(tmp_path / "staging" / "configs") == {
        **expected,
        f"config.d/{live.name}": b"<clickhouse><half",
        f"config.d/{unknown.name}": b"<clickhouse><half",
    }


def test_a_config_named_near_the_length_limit_is_restored(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """The temporary beside it carries ~45 bytes of process tag: a name of 244 bytes made it
    longer than a file name may be, and the restore failed (ENAMETOOLONG)."""
    name = "x" * 240 + ".xml"
    _, created = create_with_configs(
        engine,
        dbname,
        cli,
        tmp_path,
        spoil=lambda configs: (configs / "config.d" / name).write_bytes(b"<clickhouse/>\n"),
    )
    assert created.code == 0, created.stderr
    restored = restore_configs(engine, cli, tmp_path / "staging")
    assert restored.code == 0, restored.stderr
    assert (tmp_path / "staging" / "configs" / "config.d" / name).read_bytes() == b"<clickhouse/>\n"


def test_a_config_restore_follows_a_repack_by_another_hosts_gc(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a table's data does (test_restore_follows_a_repack_by_another_hosts_gc): this host
    deleted b, so its backup list agrees with the store; another host's gc then moved the
    config files c shares with b to a new pack and deleted the old one. restore --configs
    met "pack … missing" though a restore of tables syncs and goes on."""
    expected = backed_up_with_configs(engine, dbname, cli, tmp_path)
    changed = tmp_path / "etc-clickhouse" / "config.d" / "storage.xml"
    changed.write_bytes(b"<clickhouse><!-- c's own --></clickhouse>\n")
    expected["config.d/storage.xml"] = changed.read_bytes()
    made = create_c(engine, dbname, cli, tmp_path / "etc-clickhouse")
    assert made.code == 0, made.stderr
    assert cli(engine, "delete", "b").code == 0
    another_hosts_gc_repacks(engine, cli, tmp_path, monkeypatch)
    staging = tmp_path / "staging"
    restored = cli(
        engine, "restore", "c", "--configs", "--files-target", str(staging), "--no-tables"
    )
    assert restored.code == 0, restored.stderr
    assert tree(staging / "configs") == expected
