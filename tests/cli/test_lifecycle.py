"""delete, forget, gc, locks/unlock, run and clean --broken through the CLI, on real ClickHouse."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import ExitCode
from casbackup.repo import manifest as codec
from casbackup.repo.locks import LockRecord, machine_id
from tests.cli.test_failures import one_line_error
from tests.cli.test_incremental import create_table, fill, mutate
from tests.clickhouse.schema import fingerprints, q
from tests.engines import Engine, ServerEngine

CASBACKUP = [sys.executable, "-m", "casbackup"]


def store_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "packs").rglob("*") if p.is_file())


def committed_pack_bytes(repo: Path) -> int:
    """Bytes of packs whose put completed: temporary files of puts in flight not counted."""
    return sum(
        p.stat().st_size
        for p in (repo / "packs").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def dead_lock(repo: Path, kind: str, exclusive: bool) -> Path:
    """A lock object whose holder (a pid that cannot exist) is gone."""
    key = f"exclusive-{kind}" if exclusive else f"{kind}-deadbeef"
    record = LockRecord(
        key=f"locks/{key}",
        kind=kind,
        id="deadbeef",
        exclusive=exclusive,
        host="this",
        machine=machine_id(),
        pid=2**22 + 123,
        process_start=1,
        created_at=time.time() - 7200,
        heartbeat_at=time.time() - 7200,
        command=f"{kind} (crashed)",
    )
    path = repo / "locks" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record.encode())
    return path


def another_hosts_gc_repacks(
    engine: Engine, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc run twice from another host's catalog: it repacks live chunks, then deletes the old
    packs, which this host's catalog still locates them in."""
    with monkeypatch.context() as other_host:
        other_host.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'other.sqlite'}")
        condemned = cli(engine, "gc", "--min-age", "0s", "--repack-below", "1.0", "--json")
        assert condemned.json()["repack_bytes_written"] > 0, condemned.stderr
        assert cli(engine, "gc", "--min-age", "0s", "--json").json()["bytes_freed"] > 0


def test_delete_then_gc_frees_space_and_keeps_the_rest(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    create_table(engine, dbname)
    fill(engine, dbname, rows=300_000)
    cli(engine, "init")
    assert cli(engine, "create", "mon", "--tables", f"{dbname}.*").code == 0
    engine.sql(f"TRUNCATE TABLE {q(dbname)}.events")
    fill(engine, dbname, rows=200_000)  # different content
    assert cli(engine, "create", "tue", "--tables", f"{dbname}.*").code == 0
    tuesday = fingerprints(engine, [dbname])
    full = store_bytes(repo)

    assert cli(engine, "delete", "mon").code == 0
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["tue"]
    plan = cli(engine, "gc", "--dry-run", "--min-age", "0s", "--json").json()["plan"]
    # Monday's packs also hold a few chunks Tuesday shares (identical small files): repacked, not dropped.
    assert plan["condemn"] or plan["repack"]
    assert store_bytes(repo) == full
    first = cli(engine, "gc", "--min-age", "0s", "--json")
    assert first.code == 0, first.stderr
    condemned = first.json()
    assert condemned["packs_condemned"] > 0 and condemned["bytes_freed"] == 0
    assert (
        store_bytes(repo) == full + condemned["repack_bytes_written"]
    )  # nothing deleted in the first run
    second = cli(engine, "gc", "--min-age", "0s", "--json").json()
    assert second["bytes_freed"] > 0
    assert store_bytes(repo) == full + condemned["repack_bytes_written"] - second["bytes_freed"]
    assert store_bytes(repo) < full

    engine.sql(f"DROP DATABASE {q(dbname)}")
    assert cli(engine, "restore", "tue").code == 0
    assert fingerprints(engine, [dbname]) == tuesday


def test_gc_says_what_it_deleted_once(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """gc printed "deleted N packs" twice: a progress note on stderr, then the summary on
    stdout (and the note beside --json's document)."""
    create_table(engine, dbname)
    cli(engine, "init")
    for name, rows in (("mon", 3000), ("tue", 2000), ("wed", 1000)):
        engine.sql(f"TRUNCATE TABLE {q(dbname)}.events")
        fill(engine, dbname, rows=rows)  # different parts every day
        assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0
    assert cli(engine, "delete", "mon").code == 0
    assert cli(engine, "gc", "--min-age", "0s").code == 0  # condemns Monday's packs
    assert cli(engine, "delete", "tue").code == 0

    plain = cli(engine, "gc", "--min-age", "0s")  # deletes Monday's, condemns Tuesday's
    assert plain.code == 0, plain.stderr
    output = plain.stdout + plain.stderr
    assert output.count("deleted ") == 1, output

    as_json = cli(engine, "gc", "--min-age", "0s", "--json")  # deletes Tuesday's
    assert as_json.code == 0, as_json.stderr
    assert as_json.json()["packs_deleted"] > 0
    assert "deleted" not in as_json.stderr, as_json.stderr


def test_restore_follows_a_repack_by_another_hosts_gc(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This host deleted Monday itself, so its backup list agrees with the store and restore
    does not sync first; another host's gc (its own catalog) then moved the chunks Tuesday
    shares with Monday to a new pack and deleted the old one. The restore met "pack …
    missing" until `catalog sync` was run by hand."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=300_000)
    cli(engine, "init")
    assert cli(engine, "create", "mon", "--tables", f"{dbname}.*").code == 0
    engine.sql(f"TRUNCATE TABLE {q(dbname)}.events")
    fill(engine, dbname, rows=200_000)
    assert cli(engine, "create", "tue", "--tables", f"{dbname}.*").code == 0
    tuesday = fingerprints(engine, [dbname])
    assert cli(engine, "delete", "mon").code == 0

    another_hosts_gc_repacks(engine, cli, tmp_path, monkeypatch)

    engine.sql(f"DROP DATABASE {q(dbname)}")
    result = cli(engine, "restore", "tue")
    assert result.code == 0, result.stderr
    assert fingerprints(engine, [dbname]) == tuesday


def test_delete_unknown_name_changes_nothing(engine: Engine, dbname: str, cli: Any) -> None:
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    cli(engine, "init")
    cli(engine, "create", "a", "--tables", f"{dbname}.*")
    result = cli(engine, "delete", "a", "nope")
    assert result.code == ExitCode.NOT_FOUND
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["a"]


def test_forget_with_options_and_with_the_config(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    cli(engine, "init")
    for i in range(5):
        assert cli(engine, "create", f"b{i}", "--tables", f"{dbname}.*").code == 0
    dry = cli(engine, "forget", "--keep-last", "2", "--dry-run", "--json").json()
    assert set(dry["keep"]) == {"b3", "b4"} and set(dry["remove"]) == {"b0", "b1", "b2"}
    assert len(cli(engine, "list", "--json").json()) == 5
    assert cli(engine, "forget", "--keep-last", "3").code == 0
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b2", "b3", "b4"]
    config = tmp_path / "c.toml"
    config.write_text("[retention]\nkeep_last = 1\n")
    assert cli(engine, "--config", str(config), "forget").code == 0
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b4"]
    refused = cli(engine, "forget")
    assert refused.code == ExitCode.USAGE and "refusing" in refused.stderr


def test_forget_lists_backups_newest_first_whatever_their_names(
    engine: Engine, dbname: str, cli: Any
) -> None:
    """The table `forget --dry-run` prints (operations.md: check with it) was sorted by name:
    a backup named by hand before an upgrade stood above every newer nightly one."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    cli(engine, "init")
    for name in ("z-oldest", "2026-11-23T020000Z", "a-newest"):
        assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0
    result = cli(engine, "forget", "--keep-last", "1", "--dry-run")
    assert result.code == 0
    rows = [line.split()[::2][:2] for line in result.stdout.splitlines()[2:-1]]
    assert rows == [
        ["a-newest", "keep"],
        ["2026-11-23T020000Z", "remove"],
        ["z-oldest", "remove"],
    ], result.stdout


def copied_manifest(repo: Path, source: str, name: str, **update: Any) -> codec.Manifest:
    """Backup ``source``'s manifest written again as backup ``name``, with ``update`` applied
    (another host's, one dated ahead): what another writer could commit."""
    manifests = repo / "manifests"
    copy = codec.decode((manifests / source).read_bytes(), source).model_copy(
        update={"name": name, **update}
    )
    (manifests / name).write_bytes(codec.encode(copy))
    return copy


def stray_pack(repo: Path) -> str:
    """A pack whose trailer does not parse; its name."""
    name = "ab" * 32
    path = repo / "packs" / "ab" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a pack" * 100)
    return name


def test_forget_keeps_real_backups_beside_one_dated_in_the_future(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A manifest dated 2099 (a wrong clock, or forged) was the newest backup:
    keep-within counted back from 2099 and removed every real backup."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    cli(engine, "init")
    for name in ("b0", "b1"):
        assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0
    copied_manifest(tmp_path / "repo", "b1", "ahead", started_at=datetime(2099, 1, 1, tzinfo=UTC))

    result = cli(engine, "forget", "--keep-within", "7d", "--json")
    assert result.code == ExitCode.WARNING, result.stderr
    assert set(result.json()["keep"]) == {"ahead", "b0", "b1"} and not result.json()["remove"]
    assert "casbackup: warning: backup ahead is dated 2099-01-01 00:00 UTC" in result.stderr
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b0", "b1", "ahead"]


def test_forget_applies_the_rules_to_each_hosts_backups(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """Hosts sharing a repository: one policy over all made each host's nightly run
    expire the others' backups (a drill: keep-daily 7 removed the backup another host
    had made that day, exit 0)."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    cli(engine, "init")
    for name in ("b0", "b1"):
        assert cli(engine, "create", name, "--tables", f"{dbname}.*").code == 0
    copied_manifest(tmp_path / "repo", "b0", "db2-b0", hostname="db2")

    per_host = cli(engine, "forget", "--keep-daily", "1", "--dry-run")
    assert per_host.code == 0, per_host.stderr
    assert "policy: keep-daily 1, per host" in per_host.stdout
    rows = {line.split()[0]: line.split()[1:3] for line in per_host.stdout.splitlines()[2:-1]}
    assert rows["db2-b0"] == ["db2", "keep"] and rows["b0"][1] == "remove", per_host.stdout
    assert rows["b1"] == [socket.gethostname(), "keep"] != rows["db2-b0"]

    across = cli(engine, "forget", "--keep-daily", "1", "--across-hosts", "--json").json()
    assert set(across["keep"]) == {"b1"} and set(across["remove"]) == {"b0", "db2-b0"}
    assert [b["name"] for b in cli(engine, "list", "--json").json()] == ["b1"]


def test_a_lock_of_another_host_says_when_it_will_be_taken_for_dead(
    cli: Any, tmp_path: Path
) -> None:
    """A DR drill: a run on the new host met the killed host's lock, was told to "break a
    stale lock with `casbackup unlock`", and plain `unlock` kept it as live."""
    assert cli(None, "init").code == 0
    record = LockRecord(
        key="locks/exclusive-gc",
        kind="gc",
        id="feedface",
        exclusive=True,
        host="db1",
        machine="another-machine",
        pid=4242,
        process_start=1,
        created_at=time.time() - 120,
        heartbeat_at=(written := time.time()) - 60,
        command="gc",
    )
    (tmp_path / "repo" / "locks").mkdir(exist_ok=True)
    (tmp_path / "repo" / "locks" / "exclusive-gc").write_bytes(record.encode())
    refused = cli(None, "gc")
    taken = time.time() - written  # a loaded machine may take seconds: not part of the check
    assert refused.code == ExitCode.LOCKED
    one_line_error(refused.stderr)
    found = re.search(
        r"its host last renewed it (\d+) s ago, and it is taken for dead after 900 s without "
        r"renewal \(in (\d+) s\)",
        refused.stderr,
    )
    assert found, refused.stderr
    silent, left = (int(n) for n in found.groups())
    assert 60 <= silent <= 60 + taken + 1 and abs(silent + left - 900) <= 1, refused.stderr
    assert "`casbackup unlock locks/exclusive-gc` breaks it now" in refused.stderr
    assert cli(None, "unlock", "locks/exclusive-gc").code == 0
    assert cli(None, "gc").code == 0


def test_locks_and_unlock(cli: Any, tmp_path: Path) -> None:
    cli(None, "init")
    repo = tmp_path / "repo"
    stale = dead_lock(repo, "gc", exclusive=True)
    listed = cli(None, "locks", "--json").json()
    assert [(lk["key"], lk["stale"]) for lk in listed] == [("locks/exclusive-gc", True)]
    # A stale exclusive lock is broken automatically by the next gc...
    assert cli(None, "gc", "--json").code == 0
    assert not stale.exists()
    # ...and `unlock` removes stale ones, leaving live ones alone.
    dead_lock(repo, "backup", exclusive=False)
    live = LockRecord(
        key="locks/backup-live",
        kind="backup",
        id="live",
        exclusive=False,
        host="h",
        machine=machine_id(),
        pid=os.getpid(),
        process_start=__import__("casbackup.process", fromlist=["x"]).ProcessTag.current().start,
        created_at=time.time(),
        heartbeat_at=time.time(),
        command="create (test)",
    )
    (repo / "locks" / "backup-live").write_bytes(live.encode())
    result = cli(None, "unlock")
    assert result.code == 0 and "backup-deadbeef" in result.stdout
    assert "kept 1 live lock (locks/backup-live): " in result.stdout
    assert [lk["key"] for lk in cli(None, "locks", "--json").json()] == ["locks/backup-live"]
    # Only a live lock: "nothing to remove" alone read as a failure to remove it.
    again = cli(None, "unlock").stdout.splitlines()
    assert again[0] == "nothing to remove" and again[1].startswith("kept 1 live lock (")
    assert cli(None, "unlock", "locks/backup-live").code == 0
    assert cli(None, "locks", "--json").json() == []


def test_an_unreadable_lock_shows_no_age(cli: Any, tmp_path: Path) -> None:
    """A garbage lock records no time: locks showed it as created 56 years ago (epoch 0)."""
    cli(None, "init")
    (tmp_path / "repo" / "locks").mkdir(exist_ok=True)
    (tmp_path / "repo" / "locks" / "exclusive-gc").write_bytes(b"not a lock")
    [shown] = cli(None, "locks", "--json").json()
    assert (shown["kind"], shown["stale"], shown["heartbeat_age_s"]) == ("unreadable", True, None)
    text = cli(None, "locks")
    assert text.code == 0, text.stderr
    [row] = [line for line in text.stdout.splitlines() if line.startswith("locks/exclusive-gc")]
    assert row.split()[-3:] == ["?", "?", "yes"], row


@pytest.mark.parametrize(
    ("exclusive", "value"),
    [("true", v) for v in ("NaN", "Infinity", "-Infinity", "1e999", '"nan"')]
    + [('"false"', "1700000000.0")],  # bool("false") is True
)
def test_a_lock_that_records_no_real_time_is_unreadable(
    cli: Any, tmp_path: Path, exclusive: str, value: str
) -> None:
    """json reads NaN and Infinity: a NaN heartbeat was never stale, so `unlock` left it
    and every `run` stopped at it (exit 18); `locks --json` printed NaN, which is no JSON.
    Nor does casbackup write a boolean as a string."""
    cli(None, "init")
    (tmp_path / "repo" / "locks").mkdir(exist_ok=True)
    lock = tmp_path / "repo" / "locks" / "exclusive-run"
    lock.write_text(
        f'{{"kind": "exclusive", "id": "ab", "exclusive": {exclusive}, "host": "db2", '
        f'"machine": "m2", "pid": 7, "process_start": 9, "created_at": 1700000000.0, '
        f'"heartbeat_at": {value}, "command": "run"}}'
    )
    [shown] = cli(None, "locks", "--json").json()
    assert (shown["kind"], shown["stale"], shown["heartbeat_age_s"]) == ("unreadable", True, None)
    removed = cli(None, "unlock")
    assert removed.code == 0 and "removed locks/exclusive-run" in removed.stdout, removed
    assert not lock.exists()


def test_a_live_exclusive_lock_stops_a_second_run(
    server_engine: ServerEngine, cli: Any, tmp_path: Path
) -> None:
    cli(None, "init")
    repo = tmp_path / "repo"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from casbackup.store.local import LocalStore; from casbackup.repo.locks import Lock;"
            "lock = Lock(LocalStore(sys.argv[1]), 'run', exclusive=True, command='run').acquire();"
            "print('held', flush=True); time.sleep(120)",
            str(repo),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = cli(server_engine, "run")
        assert result.code == ExitCode.LOCKED
        assert "locked by run (pid" in result.stderr and result.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale and the next run proceeds.
    server_engine.sql("CREATE DATABASE IF NOT EXISTS t_lockrun")
    server_engine.sql(
        "CREATE TABLE IF NOT EXISTS t_lockrun.t (x UInt8) ENGINE = MergeTree ORDER BY x"
    )
    config = tmp_path / "c.toml"
    config.write_text('[backup]\ntables = ["t_lockrun.*"]\n')
    assert cli(server_engine, "--config", str(config), "run").code == 0
    server_engine.sql("DROP DATABASE t_lockrun")


def test_nightly_run_applies_retention_and_collects(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_table(engine, dbname)
    fill(engine, dbname, rows=100_000)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[backup]\ntables = ["{dbname}.*"]\n[retention]\nkeep_last = 2\n[gc]\nmin_age = "0s"\n'
    )
    cli(engine, "--config", str(config), "init")
    reports = []
    for night in range(4):
        engine.sql(f"TRUNCATE TABLE {q(dbname)}.events")
        engine.sql(  # different data every night
            f"INSERT INTO {q(dbname)}.events SELECT number, toDate('2024-01-01') + number % 90, number % 1000, "
            f"concat('s', toString(cityHash64(number, {night}))), number * {night + 2}, number / 100 "
            "FROM numbers(100000)"
        )
        result = cli(engine, "--config", str(config), "run", "--json")
        assert result.code == 0, result.stderr
        reports.append(result.json())
        time.sleep(1.1)  # distinct backup names (second resolution)
    assert len(cli(engine, "list", "--json").json()) == 2
    assert reports[2]["forget"]["remove"] and reports[3]["gc"]["bytes_freed"] > 0
    latest = cli(engine, "list", "--json").json()[-1]["name"]
    engine.sql(f"DROP DATABASE {q(dbname)}")
    assert cli(engine, "restore", latest).code == 0


def test_a_run_that_stops_after_its_backup_says_what_it_had_done(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """A run whose gc failed printed only gc's error: not that it had committed the night's
    backup and that forget had deleted the oldest (found in an operator drill)."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    config = tmp_path / "c.toml"
    config.write_text(f'[backup]\ntables = ["{dbname}.*"]\n[retention]\nkeep_last = 2\n')
    cli(engine, "--config", str(config), "init")
    for _ in range(2):
        assert cli(engine, "--config", str(config), "run").code == 0
        time.sleep(1.1)  # distinct backup names (second resolution)
    first, second = (b["name"] for b in cli(engine, "list", "--json").json())
    with (tmp_path / "repo" / "manifests" / second).open("ab") as manifest:
        manifest.write(b"x")  # gc's strict sync refuses a manifest it cannot decode
    # The catalog forgets the damaged backup: keeping 1 removes the first.
    config.write_text(f'[backup]\ntables = ["{dbname}.*"]\n[retention]\nkeep_last = 1\n')
    result = cli(engine, "--config", str(config), "run")
    assert result.code == ExitCode.INTEGRITY, result.stderr
    newest = cli(engine, "list", "--json").json()[-1]["name"]
    assert newest not in (first, second)
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "gc frees nothing while" in error
    assert error.endswith(
        f"; run had committed backup {newest} and forget had removed 1 backup ({first}) "
        "when it stopped in gc"
    )


def test_a_run_names_the_backup_it_keeps_for_its_future_date(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """forget's warning of a backup dated ahead made `run` exit 1, but its text report
    printed the backup's and gc's warnings only: the log gave no reason for the exit."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    config = tmp_path / "c.toml"
    config.write_text(f'[backup]\ntables = ["{dbname}.*"]\n[retention]\nkeep_last = 2\n')
    cli(engine, "--config", str(config), "init")
    assert cli(engine, "create", "b0", "--tables", f"{dbname}.*").code == 0
    copied_manifest(tmp_path / "repo", "b0", "ahead", started_at=datetime(2099, 1, 1, tzinfo=UTC))

    result = cli(engine, "--config", str(config), "run")
    assert result.code == ExitCode.WARNING, result.stderr
    warning = "casbackup: warning: backup ahead is dated 2099-01-01 00:00 UTC"
    assert result.stderr.count(warning) == 1, result.stderr


def test_a_run_warns_once_of_a_pack_both_its_syncs_leave_out(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """The backup's sync and gc's strict sync both meet a pack whose trailer does not parse:
    `run` printed its warning twice, and listed it twice in --json's warnings."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    config = tmp_path / "c.toml"
    config.write_text(f'[backup]\ntables = ["{dbname}.*"]\n')
    cli(engine, "--config", str(config), "init")
    name = stray_pack(tmp_path / "repo")
    left_out = f"pack {name} not indexed"

    result = cli(engine, "--config", str(config), "run")
    # verify names the pack too, as a problem (exit 19): the warning is what counts here.
    assert result.code == ExitCode.VERIFY_FAILED, result.stderr
    assert result.stderr.count(f"casbackup: warning: {left_out}") == 1, result.stderr
    time.sleep(1.1)  # distinct backup names (second resolution)
    document = cli(engine, "--config", str(config), "run", "--json").json()
    assert [w for w in document["warnings"] if w.startswith(left_out)] == [
        f"{left_out}: pack {name} is corrupt: footer magic missing (truncated or not a pack)"
    ], document["warnings"]


@pytest.mark.parametrize("engine", ["chdb"], indirect=True)
def test_clean_broken_warns_of_a_pack_its_gc_leaves_out(
    engine: Engine, cli: Any, tmp_path: Path
) -> None:
    """clean --broken runs gc, whose sync leaves out a pack whose trailer does not parse.
    Since sync stopped logging (each caller reports), clean dropped the gc report's
    warnings: the pack went unmentioned and clean exited 0."""
    assert cli(engine, "init").code == 0
    name = stray_pack(tmp_path / "repo")
    left_out = f"pack {name} not indexed: pack {name} is corrupt: footer magic missing"

    cleaned = cli(engine, "clean", "--broken", "--margin", "0s")
    assert cleaned.code == ExitCode.WARNING, cleaned.stderr
    assert cleaned.stderr.count(f"casbackup: warning: {left_out}") == 1, cleaned.stderr
    document = cli(engine, "clean", "--broken", "--margin", "0s", "--json")
    assert document.code == ExitCode.WARNING, document.stderr
    [warning] = document.json()["broken"]["warnings"]
    assert warning.startswith(left_out)
    assert (tmp_path / "repo" / "packs" / "ab" / name).exists()  # not casbackup's to delete


def test_nightly_run_reports_its_test_restore(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """With [verify] restore = true the text report said only 'verify: OK (n packs read, ...)',
    so a log could not tell whether the drill ran; the tables it restored are counted now."""
    create_table(engine, dbname)
    fill(engine, dbname, rows=1000)
    config = tmp_path / "c.toml"
    config.write_text(f'[backup]\ntables = ["{dbname}.*"]\n[verify]\nrestore = true\n')
    cli(engine, "--config", str(config), "init")
    result = cli(engine, "--config", str(config), "run")
    assert result.code == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("verify:")]
    assert line.startswith("verify: OK (") and "1 tables test-restored" in line, line


def test_clean_broken_removes_what_a_killed_backup_left(
    server_engine: ServerEngine, cli: Any, tmp_path: Path
) -> None:
    db = "t_clean_broken"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    server_engine.sql(f"CREATE DATABASE {db}")
    server_engine.sql(
        f"CREATE TABLE {db}.big (id UInt64, s String) ENGINE = MergeTree PARTITION BY id % 4 ORDER BY id"
    )
    server_engine.sql(
        f"INSERT INTO {db}.big SELECT number, toString(rand64()) FROM numbers(4000000)"
    )
    repo = tmp_path / "repo"
    config = tmp_path / "c.toml"
    config.write_text("[repository]\npack_size_mb = 1\n")
    base = [
        *CASBACKUP,
        "--config",
        str(config),
        "--repo",
        str(repo),
        "--clickhouse",
        server_engine.url,
    ]
    subprocess.run([*base, "init"], check=True, capture_output=True)
    process = subprocess.Popen(
        [*base, "create", "doomed", "--tables", f"{db}.*"], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    # Wait for committed packs, not just bytes: two puts in flight can hold
    # 3 MiB of temporary files (a pack holds at least one chunk, up to the
    # maximal chunk size) before any pack is committed.
    while committed_pack_bytes(repo) < 3 << 20 if (repo / "packs").exists() else True:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    orphaned = committed_pack_bytes(repo)
    assert orphaned > 0
    subprocess.run([*base, "clean"], check=True, capture_output=True)  # the shadow

    first = subprocess.run(
        [*base, "clean", "--broken", "--margin", "0s", "--json"], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["broken"]
    assert report["abandoned_backups"] == ["doomed"] and report["packs_condemned"] > 0
    second = subprocess.run(
        [*base, "clean", "--broken", "--margin", "0s", "--json"], capture_output=True, text=True
    )
    assert json.loads(second.stdout)["broken"]["bytes_freed"] == orphaned
    assert store_bytes(repo) == 0  # packs and the killed upload's partial file
    server_engine.sql(f"DROP DATABASE {db}")


@pytest.mark.slow
def test_create_and_gc_processes_together_on_clickhouse(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """`casbackup create` and `casbackup gc` started together, round after round, with deletes."""
    db = "t_create_gc_race"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    create_table(server_engine, db)
    fill(server_engine, db, rows=200_000)
    repo = tmp_path / "repo"
    config = tmp_path / "c.toml"
    config.write_text("[repository]\npack_size_mb = 1\n")
    base = [
        *CASBACKUP,
        "--config",
        str(config),
        "--repo",
        str(repo),
        "--clickhouse",
        server_engine.url,
    ]
    subprocess.run([*base, "init"], check=True, capture_output=True)
    recorded: dict[str, Any] = {}
    for round_ in range(8):
        mutate(
            server_engine,
            f"ALTER TABLE {db}.events UPDATE v = v + {round_ + 1} WHERE id % 3 = {round_ % 3}",
        )
        name = f"r{round_}"
        create = subprocess.Popen(
            [*base, "create", name, "--tables", f"{db}.*"], stderr=subprocess.PIPE
        )
        gc = subprocess.Popen(
            [*base, "gc", "--min-age", "0s", "--repack-below", "0.8"], stderr=subprocess.PIPE
        )
        _, create_err = create.communicate(timeout=300)
        _, gc_err = gc.communicate(timeout=300)
        assert create.returncode == 0, create_err.decode()
        assert gc.returncode in (0, ExitCode.LOCKED), gc_err.decode()
        recorded[name] = fingerprints(server_engine, [db])
        if round_ >= 2 and round_ % 2 == 0:
            victim = f"r{round_ - 2}"
            subprocess.run([*base, "delete", victim], check=True, capture_output=True)
            del recorded[victim]
    for _ in range(2):
        subprocess.run([*base, "gc", "--min-age", "0s"], check=True, capture_output=True)
    for name, expected in recorded.items():
        copy = f"{db}_{name}"
        result = subprocess.run(
            [*base, "restore", name, "--as", f"{db}:{copy}"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        restored = {
            k.replace(copy, db, 1): v for k, v in fingerprints(server_engine, [copy]).items()
        }
        assert restored == expected, name
        server_engine.sql(f"DROP DATABASE {copy}")
    server_engine.sql(f"DROP DATABASE {db}")


def test_clean_keeps_a_lock_that_changed_hands_after_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc broke the dead exclusive lock and took its own between clean's read and delete."""
    import dataclasses

    from casbackup import clean
    from casbackup.process import ProcessTag
    from casbackup.repo.locks import read_locks
    from casbackup.store.local import LocalStore

    repo = tmp_path / "repo"
    store = LocalStore(repo)
    path = dead_lock(repo, "gc", exclusive=True)
    (dead,) = read_locks(store)
    me = ProcessTag.current()
    live = dataclasses.replace(dead, id="cafef00d", pid=me.pid, process_start=me.start)
    path.write_bytes(live.encode())
    monkeypatch.setattr(clean, "read_locks", lambda store: [dead])  # what clean had read

    clean.clean_store(store, clean.CleanReport())
    assert read_locks(store)[0].id == "cafef00d"
