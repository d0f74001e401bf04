"""Failures an operator can meet: each one really happens here, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from stat import S_ISDIR
from typing import Any

import pytest

from casbackup.clickhouse.parts import PartName
from casbackup.clickhouse.server import SCRATCH_PREFIX, ClickHouseServer
from casbackup.errors import ClickHouseError, ExitCode, StoreFull
from casbackup.process import ProcessTag
from casbackup.store.local import LocalStore
from tests.clickhouse.schema import create_long_part_names, create_realistic, fingerprints, q
from tests.engines import PROTECTED_PASSWORD, PROTECTED_USER, Engine, ServerEngine, free_port
from tests.helpers import flip_byte, unwritable

CASBACKUP = [sys.executable, "-m", "casbackup"]


def one_line_error(stderr: str) -> None:
    assert stderr.startswith("casbackup: error: "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr


def catalog_rows(repo: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(repo / "catalog.sqlite") as conn:
        return conn.execute(sql).fetchall()


# --- failures inside a backup ---------------------------------------------------------


def test_exception_mid_backup_cleans_shadow_and_commits_nothing(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casbackup.backup import BackupService

    create_realistic(engine, dbname, rows=4000)
    cli(engine, "init")
    real = BackupService._store_parts
    calls = {"n": 0}

    def failing(self: BackupService, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second table with data, while its parts are frozen
            assert engine.shadow_dirs(), "the table should be frozen at this point"
            raise RuntimeError("injected failure")
        return real(self, *args)

    monkeypatch.setattr(BackupService, "_store_parts", failing)
    result = cli(engine, "create", "doomed", "--tables", f"{dbname}.*")
    assert result.code == ExitCode.INTERNAL
    one_line_error(result.stderr)
    assert "injected failure" in result.stderr
    assert engine.shadow_dirs() == []
    assert not (tmp_path / "repo" / "manifests").exists() or not list(
        (tmp_path / "repo" / "manifests").iterdir()
    )
    assert catalog_rows(tmp_path / "repo", "SELECT name, state FROM backups") == []
    monkeypatch.undo()
    assert (
        cli(engine, "create", "doomed", "--tables", f"{dbname}.*").code == 0
    )  # the name is free again


@pytest.mark.parametrize("level", ["table", "part"])
def test_frozen_parts_the_user_may_not_read_are_exit_20_not_a_bug(
    engine: Engine,
    dbname: str,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    level: str,
) -> None:
    """casbackup run as a user who cannot read ClickHouse's data directory (not root, not
    ClickHouse's user): FREEZE succeeds, reading the shadow is refused. That was an internal
    error (exit 70, "report it") at the table's directory, and at a part's directory os.walk
    swallowed the error: the part was stored without its files and the backup committed."""
    create_realistic(engine, dbname, rows=3000)
    cli(engine, "init")
    real_stat, real_scandir = os.stat, os.scandir

    def refused(path: Any) -> bool:
        """A table's shadow directory (it holds parts), or a part's."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False  # a descriptor
        text = os.fsdecode(path)
        if "/shadow/casbackup_" not in text:
            return False
        try:
            if not S_ISDIR(real_stat(text).st_mode):
                return False
        except OSError:
            return False
        if level == "part":
            return PartName.parse(Path(text).name) is not None
        with real_scandir(text) as entries:
            return any(PartName.parse(entry.name) is not None for entry in entries)

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if level == "table" and refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_stat(path, *args, **kwargs)

    def scandir(path: Any = ".") -> Any:
        if refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    result = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    monkeypatch.undo()
    assert result.code == ExitCode.SOURCE_FILES == 20, result.stderr
    one_line_error(result.stderr)
    assert "cannot read " in result.stderr and "/shadow/casbackup_" in result.stderr
    assert "Permission denied" in result.stderr
    assert "as root or as the user ClickHouse runs as" in result.stderr
    assert engine.shadow_dirs() == []
    assert catalog_rows(tmp_path / "repo", "SELECT name FROM backups") == []


def test_a_part_file_whose_name_is_not_utf8_is_named_not_a_bug(
    chdb_engine: Engine, cli: Any, tmp_path: Path
) -> None:
    """No ClickHouse part file is named so, and a manifest holds text: the backup ended as
    exit 70 (UnicodeEncodeError) when the catalog was given the name, its shadow cleaned up."""
    engine, db = chdb_engine, "t_not_utf8"
    engine.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    engine.sql(f"CREATE TABLE {db}.t (x UInt64) ENGINE = MergeTree ORDER BY x")
    engine.sql(f"INSERT INTO {db}.t SELECT number FROM numbers(100)")
    [(part,)] = engine.sql(f"SELECT path FROM system.parts WHERE database = '{db}' AND active")
    stranger = os.fsencode(part) + b"/\xff\xfe.bin"
    Path(os.fsdecode(stranger)).write_bytes(b"x")
    try:
        cli(engine, "init")
        result = cli(engine, "create", "b", "--tables", f"{db}.*")
        assert result.code == ExitCode.SOURCE_FILES, result.stderr
        one_line_error(result.stderr)
        assert "\\xff\\xfe.bin" in result.stderr and "not UTF-8" in result.stderr
        assert engine.shadow_dirs() == []
        assert catalog_rows(tmp_path / "repo", "SELECT name FROM backups") == []
    finally:
        os.unlink(stranger)
        engine.sql(f"DROP DATABASE {db} SYNC")


def test_clean_never_follows_a_symlinked_shadow_and_never_says_it_removed_what_is_left(
    chdb_engine: Engine, cli: Any, tmp_path: Path
) -> None:
    """A symlink named like a dead run's shadow: rmtree(ignore_errors=True) left it, and
    `clean` said "removed shadow" on every run. The link goes; what it points at stays."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file").write_text("keep")
    shadow = chdb_engine.data_root / "shadow"
    shadow.mkdir(exist_ok=True)
    link = shadow / "casbackup_1_1_deadbeef"
    link.symlink_to(victim)
    cli(chdb_engine, "init")
    result = cli(chdb_engine, "clean")
    assert result.code == ExitCode.OK, result.stderr
    assert f"removed shadow {link}" in result.stdout
    assert not os.path.lexists(link) and (victim / "sub" / "file").read_text() == "keep"


def test_full_store_is_a_clear_error(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_realistic(engine, dbname, rows=4000)
    cli(engine, "init")

    def full(self: LocalStore, key: str, data: object) -> None:
        raise StoreFull(key=key, detail=f"{self.root}: No space left on device")

    monkeypatch.setattr(LocalStore, "put", full)
    result = cli(engine, "create", "b", "--tables", f"{dbname}.*")
    assert result.code == ExitCode.STORE
    one_line_error(result.stderr)
    assert "no space left" in result.stderr
    assert engine.shadow_dirs() == []


# --- signals: Ctrl-C, systemd stop, kill -9 ---------------------------------------------


def _big_table(engine: ServerEngine, db: str) -> None:
    engine.sql(f"CREATE DATABASE {q(db)}")
    engine.sql(
        f"CREATE TABLE {q(db)}.big (id UInt64, payload String) ENGINE = MergeTree "
        "PARTITION BY id % 8 ORDER BY id"
    )
    engine.sql(
        f"INSERT INTO {q(db)}.big SELECT number, concat(toString(rand64()), toString(rand64()), "
        "toString(rand64())) FROM numbers(3000000)"
    )


def _start_backup(engine: Engine, repo: Path, db: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *CASBACKUP,
            "--repo",
            str(repo),
            "--clickhouse",
            engine.url,
            "create",
            name,
            "--tables",
            f"{db}.*",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_shadow(engine: Engine, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not engine.shadow_dirs():
        if process.poll() is not None or time.monotonic() > deadline:
            _, err = process.communicate()
            pytest.fail(f"backup ended before freezing anything: {err.decode()}")
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_backup_cleans_up(
    server_engine: ServerEngine, tmp_path: Path, sig: signal.Signals
) -> None:
    db = f"t_sig_{sig.name.lower()}"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    _big_table(server_engine, db)
    repo = tmp_path / "repo"
    subprocess.run([*CASBACKUP, "--repo", str(repo), "init"], check=True, capture_output=True)
    process = _start_backup(server_engine, repo, db, "interrupted")
    _wait_for_shadow(server_engine, process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, err.decode()
    assert err.decode().count("\n") == 1 and "Traceback" not in err.decode()
    assert server_engine.shadow_dirs() == []
    assert catalog_rows(repo, "SELECT name FROM backups") == []
    server_engine.sql(f"DROP DATABASE {db}")


def test_kill_9_then_clean_removes_the_shadow(server_engine: ServerEngine, tmp_path: Path) -> None:
    db = "t_kill9"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    _big_table(server_engine, db)
    repo = tmp_path / "repo"
    subprocess.run([*CASBACKUP, "--repo", str(repo), "init"], check=True, capture_output=True)
    process = _start_backup(server_engine, repo, db, "killed")
    _wait_for_shadow(server_engine, process)
    process.kill()
    process.wait()
    assert server_engine.shadow_dirs() != []  # what a killed run leaves...
    cleaned = subprocess.run(
        [*CASBACKUP, "--repo", str(repo), "--clickhouse", server_engine.url, "clean", "--json"],
        capture_output=True,
        text=True,
    )
    assert cleaned.returncode == 0, cleaned.stderr
    report = json.loads(cleaned.stdout)
    assert len(report["shadows"]) == 1
    assert server_engine.shadow_dirs() == []  # ...and clean removes
    # The killed backup's lease too: its process is gone, on this host.
    assert [key.split("-")[0] for key in report["stale_locks"]] == ["locks/backup"]
    assert not list((repo / "locks").iterdir())
    again = subprocess.run(
        [
            *CASBACKUP,
            "--repo",
            str(repo),
            "--clickhouse",
            server_engine.url,
            "create",
            "after",
            "--tables",
            f"{db}.*",
        ],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    server_engine.sql(f"DROP DATABASE {db}")


# A backup that dies by SIGKILL once its catalog row says `running`, before
# its manifest: the commit never happened, the row stays.
_DIE_BEFORE_COMMIT = (
    "import os, signal\n"
    "from casbackup.catalog.backups import BackupRecords\n"
    "BackupRecords.record_contents = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from casbackup.launch import main\n"
    "main()\n"
)


def _small_table_and_repository(
    server_engine: ServerEngine, tmp_path: Path, db: str
) -> tuple[Path, list[str]]:
    """Table db.t of 1000 rows and a new repository; returns it and the CLI's base arguments."""
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    server_engine.sql(f"CREATE DATABASE {db}")
    server_engine.sql(f"CREATE TABLE {db}.t (x UInt64) ENGINE = MergeTree ORDER BY x")
    server_engine.sql(f"INSERT INTO {db}.t SELECT number FROM numbers(1000)")
    repo = tmp_path / "repo"
    base = ["--repo", str(repo), "--clickhouse", server_engine.url]
    subprocess.run([*CASBACKUP, *base, "init"], check=True, capture_output=True)
    return repo, base


def test_a_name_a_killed_backup_never_committed_is_free_again(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """`create NAME` after a SIGKILLed `create NAME`: no backup NAME exists, so it is no conflict."""
    db = "t_kill_name"
    repo, base = _small_table_and_repository(server_engine, tmp_path, db)
    create = ["create", "nightly", "--tables", f"{db}.*"]
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_BEFORE_COMMIT, *base, *create], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    assert catalog_rows(repo, "SELECT name, state FROM backups") == [("nightly", "running")]
    # What a scheduler does next: the same command again, no `clean` in between.

    again = subprocess.run([*CASBACKUP, *base, *create], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert catalog_rows(repo, "SELECT name, state FROM backups") == [("nightly", "committed")]
    server_engine.sql(f"DROP DATABASE {db}")


def _term_after(module: str, cls: str, method: str) -> str:
    """A casbackup process that gets SIGTERM the moment ``cls.method`` has returned."""
    return (
        "import os, signal\n"
        f"from {module} import {cls}\n"
        f"real = {cls}.{method}\n"
        "def then_term(*a, **k):\n"
        "    result = real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return result\n"
        f"{cls}.{method} = then_term\n"
        "from casbackup.launch import main\n"
        "main()\n"
    )


@pytest.mark.parametrize(
    "after",
    [
        ("casbackup.repo.repository", "Repository", "write_manifest"),  # the commit point
        ("casbackup.repo.locks", "Lock", "release"),  # the lease, released after the commit
    ],
    ids=["manifest written", "lease released"],
)
def test_sigterm_after_the_manifest_says_the_backup_is_complete(
    server_engine: ServerEngine, tmp_path: Path, after: tuple[str, str, str]
) -> None:
    """It said "partial work was cleaned up" of a committed backup, and left the catalog
    row `running` (gone: the run forgot it) until a sync imported the manifest."""
    db = "t_term_manifest"
    repo, base = _small_table_and_repository(server_engine, tmp_path, db)
    stopped = subprocess.run(
        [sys.executable, "-c", _term_after(*after), *base, "create", "b", "--tables", f"{db}.*"],
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == ExitCode.INTERRUPTED, stopped.stderr
    one_line_error(stopped.stderr)
    assert "after backup b was committed: the backup is complete" in stopped.stderr
    assert catalog_rows(repo, "SELECT name, state FROM backups") == [("b", "committed")]
    server_engine.sql(f"DROP DATABASE {db}")


# A catalog that refuses the commit's own update (disk full, a lock held too
# long) once the manifest is in the store; with SIGTERM arriving meanwhile too.
_CATALOG_FAILS_AT_COMMIT = (
    "import os, signal, sys\n"
    "from casbackup.catalog.backups import BackupRecords\n"
    "from casbackup.errors import CatalogError\n"
    "mode = sys.argv.pop(1)\n"
    "def refuse(*a, **k):\n"
    "    if mode == 'term':\n"
    "        os.kill(os.getpid(), signal.SIGTERM)\n"
    "    raise CatalogError(detail='database or disk is full')\n"
    "BackupRecords.mark_committed = refuse\n"
    "from casbackup.launch import main\n"
    "main()\n"
)


@pytest.mark.parametrize(
    ("signalled", "code", "says"),
    [
        ("", ExitCode.CATALOG, "backup b is complete: its manifest is in the repository"),
        ("term", ExitCode.INTERRUPTED, "after backup b was committed: the backup is complete"),
    ],
    ids=["catalog error", "catalog error and SIGTERM"],
)
def test_a_catalog_that_fails_after_the_manifest_never_calls_the_backup_failed(
    server_engine: ServerEngine, tmp_path: Path, signalled: str, code: int, says: str
) -> None:
    """The manifest is the commit point: a catalog error after it is not a failed backup.

    It said only "catalog error: ...", or with a signal pending "interrupted
    ...; partial work was cleaned up", of a backup that was complete; the
    run then forgot its row, so `create b` again said it exists.
    """
    db = "t_catalog_after_manifest"
    repo, base = _small_table_and_repository(server_engine, tmp_path, db)
    create = ["create", "b", "--tables", f"{db}.*"]
    failed = subprocess.run(
        [sys.executable, "-c", _CATALOG_FAILS_AT_COMMIT, signalled or "-", *base, *create],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == code, failed.stderr
    one_line_error(failed.stderr)
    assert says in failed.stderr
    listed = subprocess.run([*CASBACKUP, *base, "list", "--json"], capture_output=True, text=True)
    assert [b["name"] for b in json.loads(listed.stdout)] == ["b"], listed.stderr
    assert catalog_rows(repo, "SELECT name, state FROM backups") == [("b", "committed")]
    server_engine.sql(f"DROP DATABASE {db}")


def test_clean_broken_never_says_nothing_to_clean_when_it_forgot_a_run(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    db = "t_kill_broken_text"
    repo, base = _small_table_and_repository(server_engine, tmp_path, db)
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_BEFORE_COMMIT, *base, "create", "b", "--tables", f"{db}.*"],
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    # The nightly clean after a failed run (it removes the dead lease), then the weekly one.
    subprocess.run([*CASBACKUP, *base, "clean"], check=True, capture_output=True)
    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--broken", "--margin", "0s"], capture_output=True, text=True
    )
    assert cleaned.returncode == 0, cleaned.stderr
    # On stdout, with the rest of clean's report (it was on stderr, alone).
    assert "forgot abandoned backup b" in cleaned.stdout
    assert "broken packs: deleted " in cleaned.stdout and not cleaned.stderr
    assert "nothing to clean" not in cleaned.stdout
    assert catalog_rows(repo, "SELECT name FROM backups") == []
    server_engine.sql(f"DROP DATABASE {db}")


# A catalog rebuild that dies by SIGKILL while it fills its new file.
_DIE_IN_REBUILD = (
    "import os, signal\n"
    "import casbackup.catalog.rebuild as rebuild\n"
    "rebuild.sync = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from casbackup.launch import main\n"
    "main()\n"
)


def test_clean_removes_the_file_a_killed_catalog_rebuild_was_writing(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    base = ["--repo", str(repo), "--clickhouse", server_engine.url]
    subprocess.run([*CASBACKUP, *base, "init"], check=True, capture_output=True)
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_IN_REBUILD, *base, "catalog", "rebuild"], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in repo.glob(".catalog.sqlite.rebuild-*"))
    assert left  # the half-written catalog, as large as the real one

    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    assert sorted(Path(p).name for p in json.loads(cleaned.stdout)["catalog_temporaries"]) == left
    assert not list(repo.glob(".catalog.sqlite.rebuild-*"))
    assert (repo / "catalog.sqlite").exists()
    rebuilt = subprocess.run([*CASBACKUP, *base, "catalog", "rebuild"], capture_output=True)
    assert rebuilt.returncode == 0, rebuilt.stderr


def _attach_patched(*body: str) -> str:
    """A casbackup process whose ATTACH PART runs ``body`` (``attach()`` is the real one)."""
    lines = [
        "import os, signal",
        "from casbackup.clickhouse.server import ClickHouseServer",
        "real, calls = ClickHouseServer.attach_part, []",
        "def patched(*a, **k):",
        "    attach = lambda: real(*a, **k)",
        "    calls.append(1)",
        *(f"    {line}" for line in body),
        "ClickHouseServer.attach_part = patched",
        "from casbackup.launch import main",
        "main()",
    ]
    return "\n".join(lines) + "\n"


# A restore that dies by SIGKILL the moment it would run ATTACH PART: the part
# is already renamed to the name ATTACH expects under detached/.
_DIE_AT_ATTACH = _attach_patched("os.kill(os.getpid(), signal.SIGKILL)")


def _backed_up_table(server_engine: ServerEngine, tmp_path: Path, db: str, days: int) -> list[str]:
    """Table db.t (4000 rows over ``days`` days) backed up as b; returns the CLI's base arguments.

    Its copy, <db>_copy, is dropped too, for a restore --as to make afresh."""
    for name in (db, f"{db}_copy"):
        server_engine.sql(f"DROP DATABASE IF EXISTS {name}")
    server_engine.sql(f"CREATE DATABASE {db}")
    server_engine.sql(
        f"CREATE TABLE {db}.t (d Date, x UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY x"
    )
    server_engine.sql(
        f"INSERT INTO {db}.t SELECT toDate('2024-01-01') + number % {days}, number FROM numbers(4000)"
    )
    base = ["--repo", str(tmp_path / "repo"), "--clickhouse", server_engine.url]
    for args in (["init"], ["create", "b", "--tables", f"{db}.*"]):
        subprocess.run([*CASBACKUP, *base, *args], check=True, capture_output=True)
    return base


def _restore_killed(
    server_engine: ServerEngine, tmp_path: Path, db: str, days: int, script: str
) -> tuple[list[str], Path]:
    """Restore ``_backed_up_table`` --as <db>_copy in a process that ``script`` kills;
    returns the CLI's base arguments and the copy's detached/."""
    copy = f"{db}_copy"
    base = _backed_up_table(server_engine, tmp_path, db, days)
    killed = subprocess.run(
        [sys.executable, "-c", script, *base, "restore", "b", "--as", f"{db}:{copy}"],
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    data_path = server_engine.value(
        f"SELECT data_path FROM system.tables WHERE database = '{copy}'"
    )
    return base, Path(data_path) / "detached"


def test_restore_killed_before_attach_leaves_what_clean_removes(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    db, copy = "t_kill_attach", "t_kill_attach_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 40, _DIE_AT_ATTACH)
    left = sorted(p.name for p in detached.iterdir())
    # The part renamed for ATTACH, the marker saying whose it is, the marker of the
    # table's paused merges, the partial marker made for the first ATTACH (which
    # never landed: clean removes it without a warning), the next part still staged.
    assert left[0] == "202401_1_1_0"
    assert [n.split("_")[1] for n in left[1:]] == ["attaching", "merges", "partial", "tmp"]

    refused = subprocess.run(
        [*CASBACKUP, *base, "restore", "b", "--as", f"{db}:{copy}"], capture_output=True, text=True
    )
    assert refused.returncode == ExitCode.CONFLICT
    assert "`casbackup clean` removes what a killed restore left there" in refused.stderr

    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(cleaned.stdout)
    assert sorted(Path(p).name for p in report["temp_parts"]) == [
        n for n in left if "_merges_" not in n
    ]
    assert report["merges_resumed"] == [f"{copy}.t"]
    assert list(detached.iterdir()) == []
    again = subprocess.run(
        [*CASBACKUP, *base, "restore", "b", "--as", f"{db}:{copy}"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert server_engine.value(f"SELECT sum(x) FROM {copy}.t") == sum(range(4000))
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


_DIE_AFTER_ATTACH = _attach_patched("attach()", "os.kill(os.getpid(), signal.SIGKILL)")


def test_clean_removes_the_part_an_engine_killed_inside_attach_left(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """ATTACH PART renames detached/<part> to attaching_<part> before it takes the part in.

    chdb runs inside the restore's process: a restore killed there kills the
    engine mid-ATTACH and leaves attaching_<part> (seen with a kill on that
    rename, 26.9). `clean` left it for ever; the attaching marker says whose it is.
    Made here by hand from a restore killed just before ATTACH, on the server."""
    db, copy = "t_kill_in_attach", "t_kill_in_attach_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 40, _DIE_AT_ATTACH)
    (detached / "202401_1_1_0").rename(detached / "attaching_202401_1_1_0")
    # One beside a marker made an hour before it came is not the restore's (a DETACH since).
    (marker,) = detached.glob("casbackup_attaching_*")
    older = detached / marker.name.replace("202401_1_1_0", "202402_2_2_0")
    older.mkdir()
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    (detached / "attaching_202402_2_2_0").mkdir()

    # ATTACH would fail on it (ClickHouse's rename finds its target taken), part-way
    # through the table: the restore refuses before staging, with the advice.
    restore = [*CASBACKUP, *base, "restore", "b", "--as", f"{db}:{copy}"]
    refused = subprocess.run(restore, capture_output=True, text=True)
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert f"{detached / 'attaching_202401_1_1_0'} already exists: `casbackup clean`" in (
        refused.stderr
    )

    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    removed = {Path(p).name for p in json.loads(cleaned.stdout)["temp_parts"]}
    assert "attaching_202401_1_1_0" in removed and "attaching_202402_2_2_0" not in removed
    assert [p.name for p in detached.iterdir()] == ["attaching_202402_2_2_0"]
    refused = subprocess.run(restore, capture_output=True, text=True)
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert "attaching_202402_2_2_0 already exists" in refused.stderr
    (detached / "attaching_202402_2_2_0").rmdir()
    again = subprocess.run(restore, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert server_engine.value(f"SELECT sum(x) FROM {copy}.t") == sum(range(4000))
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_clean_finds_the_part_of_a_killed_restore_whose_name_is_near_the_limit(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """A part name of 215 bytes does not fit beside the attaching marker's process tag: the
    marker holds the name's digest, and `clean` finds the part renamed for ATTACH by it."""
    db, copy = "t_kill_long", "t_kill_long_copy"
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE IF EXISTS {name}")
    create_long_part_names(server_engine, db)
    (part,) = [
        n for (n,) in server_engine.sql(f"SELECT name FROM system.parts WHERE database = '{db}'")
    ]
    base = ["--repo", str(tmp_path / "repo"), "--clickhouse", server_engine.url]
    for args in (["init"], ["create", "b", "--tables", f"{db}.*"]):
        subprocess.run([*CASBACKUP, *base, *args], check=True, capture_output=True)
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_AT_ATTACH, *base, "restore", "b", "--as", f"{db}:{copy}"],
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    detached = (
        Path(server_engine.value(f"SELECT data_path FROM system.tables WHERE database = '{copy}'"))
        / "detached"
    )
    left = sorted(p.name for p in detached.iterdir())
    assert left[0] == part and [n.split("_")[1] for n in left[1:]] == ["attaching", "merges"]
    assert all(len(n.encode()) <= 255 for n in left)

    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    assert sorted(Path(p).name for p in json.loads(cleaned.stdout)["temp_parts"]) == left[:2]
    assert list(detached.iterdir()) == []
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_clean_never_removes_a_part_detached_later_under_a_killed_restores_name(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """Killed after ATTACH: only the marker is left. A DETACH later recreates detached/<part>."""
    db, copy = "t_kill_attached", "t_kill_attached_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 20, _DIE_AFTER_ATTACH)
    (marker,) = detached.glob("casbackup_attaching_*")
    assert marker.name.startswith("casbackup_attaching_") and marker.name.endswith("202401_1_1_0")
    # Well after the kill (the marker made an hour ago), the operator detaches the part.
    os.utime(marker, (time.time() - 3600, time.time() - 3600))
    server_engine.sql(f"ALTER TABLE {copy}.t DETACH PARTITION 202401")
    # And a hostile marker naming '..' must not reach the table's directory.
    (detached / "casbackup_attaching_1_2_ab_..").mkdir()

    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    removed = sorted(Path(p).name for p in json.loads(cleaned.stdout)["temp_parts"])
    assert removed == sorted(["casbackup_attaching_1_2_ab_..", marker.name])
    assert [p.name for p in detached.iterdir()] == ["202401_1_1_0"]
    server_engine.sql(f"ALTER TABLE {copy}.t ATTACH PARTITION 202401")
    assert server_engine.value(f"SELECT count() FROM {copy}.t") == 4000
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


# systemd's SIGTERM landing after a part was renamed for ATTACH PART, before ATTACH ran.
_TERM_BEFORE_ATTACH = _attach_patched("os.kill(os.getpid(), signal.SIGTERM)", "attach()")


# The server refusing the second part (after the first was attached).
_SECOND_ATTACH_REFUSED = _attach_patched(
    "if len(calls) == 2:",
    "    from casbackup.errors import ClickHouseError",
    "    raise ClickHouseError(detail='Too many parts (300)')",
    "attach()",
)


@pytest.mark.parametrize("stop", ["SIGTERM", "ATTACH refused"])
def test_a_restore_stopped_while_attaching_says_what_the_table_holds(
    server_engine: ServerEngine, tmp_path: Path, stop: str
) -> None:
    """Renamed parts are attached before a signal is taken: none is left under its final name.

    Not "partial work was cleaned up": the table holds the first of its two parts."""
    db = f"t_stop_attach_{stop.split()[-1].lower()}"
    copy = f"{db}_copy"
    base = _backed_up_table(server_engine, tmp_path, db, 40)
    script = _TERM_BEFORE_ATTACH if stop == "SIGTERM" else _SECOND_ATTACH_REFUSED
    stopped = subprocess.run(
        [sys.executable, "-c", script, *base, "restore", "b", "--as", f"{db}:{copy}"],
        capture_output=True,
        text=True,
    )
    left = (
        f"{copy}.t holds 1 of the 2 parts this restore attaches: run the same restore again "
        "with --drop-existing to restore it whole"
    )
    if stop == "SIGTERM":
        assert stopped.returncode == ExitCode.INTERRUPTED, stopped.stderr
        assert stopped.stderr.strip() == f"casbackup: error: interrupted by SIGTERM; {left}"
    else:
        assert stopped.returncode == ExitCode.CLICKHOUSE_QUERY, stopped.stderr
        assert stopped.stderr.strip().endswith(f": Too many parts (300); {left}")
    data_path = server_engine.value(
        f"SELECT data_path FROM system.tables WHERE database = '{copy}'"
    )
    # Only the marker that says the table is part-restored.
    assert [p.name[:18] for p in (Path(data_path) / "detached").iterdir()] == ["casbackup_partial_"]
    assert 0 < server_engine.value(f"SELECT count() FROM {copy}.t") < 4000
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_a_verify_drill_stopped_while_attaching_leaves_nothing_to_finish(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """Its scratch copy is dropped on the way out: no "run the same restore again" advice."""
    db = "t_stop_attach_verify"
    base = _backed_up_table(server_engine, tmp_path, db, 40)
    stopped = subprocess.run(
        [sys.executable, "-c", _TERM_BEFORE_ATTACH, *base, "verify", "b", "--restore"],
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == ExitCode.INTERRUPTED, stopped.stderr
    assert stopped.stderr.strip().endswith("interrupted by SIGTERM; partial work was cleaned up"), (
        stopped.stderr
    )
    assert not [d for (d,) in server_engine.sql("SHOW DATABASES") if d.startswith(SCRATCH_PREFIX)]
    server_engine.sql(f"DROP DATABASE {db}")


# systemd's SIGTERM as the first part of a restore is staged: after --drop-existing dropped.
_TERM_WHILE_STAGING = "\n".join(
    [
        "import os, signal",
        "from casbackup.restore import RestoreService",
        "real = RestoreService._stage_parts",
        "def patched(*a, **k):",
        "    os.kill(os.getpid(), signal.SIGTERM)",
        "    return real(*a, **k)",
        "RestoreService._stage_parts = patched",
        "from casbackup.launch import main",
        "main()",
    ]
)


@pytest.mark.parametrize("stop", ["staging", "attaching"])
def test_a_drop_existing_restore_stopped_says_what_it_dropped(
    server_engine: ServerEngine, tmp_path: Path, stop: str
) -> None:
    """Stopped after --drop-existing dropped the tables: their old data is gone, and it says so.

    It said "partial work was cleaned up" of tables it had dropped and not
    restored yet (found by a kill campaign: SIGTERM while staging)."""
    db = f"t_drop_stopped_{stop}"
    base = _backed_up_table(server_engine, tmp_path, db, 40)  # db.t: two parts
    server_engine.sql(f"CREATE TABLE {db}.u (x UInt64) ENGINE = MergeTree ORDER BY x")
    server_engine.sql(f"INSERT INTO {db}.u SELECT number FROM numbers(10)")
    subprocess.run([*CASBACKUP, *base, "create", "b2", "--tables", f"{db}.*"], check=True)
    server_engine.sql(f"INSERT INTO {db}.t SELECT toDate('2024-01-01'), 1000000000")  # the old data
    server_engine.sql(f"INSERT INTO {db}.u SELECT 1000000000")
    restore = [*base, "restore", "b2", "--tables", f"{db}.*", "--drop-existing"]
    script = _TERM_WHILE_STAGING if stop == "staging" else _TERM_BEFORE_ATTACH
    stopped = subprocess.run(
        [sys.executable, "-c", script, *restore], capture_output=True, text=True
    )
    assert stopped.returncode == ExitCode.INTERRUPTED, stopped.stderr
    one_line_error(stopped.stderr)
    assert "partial work was cleaned up" not in stopped.stderr
    gone = (
        "whose data the restore had not put back: the old data is gone; run the same restore "
        "again to restore the backup's"
    )
    if stop == "staging":
        assert stopped.stderr.strip() == (
            f"casbackup: error: interrupted by SIGTERM; --drop-existing had dropped {db}.t, "
            f"{db}.u, {gone}"
        )
        assert server_engine.value(f"SELECT count() FROM {db}.t") == 0
    else:  # t holds one of its two parts (and says so), u is still empty
        assert stopped.stderr.strip() == (
            f"casbackup: error: interrupted by SIGTERM; {db}.t holds 1 of the 2 parts this "
            "restore attaches: run the same restore again with --drop-existing to restore it "
            f"whole; --drop-existing had dropped {db}.u, {gone}"
        )
        assert 0 < server_engine.value(f"SELECT count() FROM {db}.t") < 4000
    assert server_engine.value(f"SELECT count() FROM {db}.u") == 0

    again = subprocess.run([*CASBACKUP, *restore], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert server_engine.value(f"SELECT sum(x) FROM {db}.t") == sum(range(4000))
    assert server_engine.value(f"SELECT sum(x) FROM {db}.u") == sum(range(10))
    server_engine.sql(f"DROP DATABASE {db}")


# Killed by the second ATTACH PART, the first part attached.
_DIE_AT_SECOND_ATTACH = _attach_patched(
    "if len(calls) == 2:", "    os.kill(os.getpid(), signal.SIGKILL)", "attach()"
)


@pytest.mark.parametrize("then", ["restore whole", "clean"])
def test_a_restore_killed_part_way_through_attaching_is_reported(
    server_engine: ServerEngine, tmp_path: Path, then: str
) -> None:
    """Killed after the first of two ATTACHes: a table that looks restored holds half the rows.

    The next restore without --drop-existing says so, and `clean` warns of it once."""
    db = f"t_kill_partial_{then.split()[0]}"
    copy = f"{db}_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 40, _DIE_AT_SECOND_ATTACH)
    assert 0 < server_engine.value(f"SELECT count() FROM {copy}.t") < 4000
    restore = [*CASBACKUP, *base, "restore", "b", "--as", f"{db}:{copy}"]
    clean = [*CASBACKUP, *base, "clean"]

    refused = subprocess.run(restore, capture_output=True, text=True)
    assert refused.returncode == ExitCode.CONFLICT
    assert f"{copy}.t has data (only some of it: a restore stopped while attaching" in (
        refused.stderr
    )
    dry = subprocess.run([*clean, "--dry-run", "--json"], capture_output=True)
    assert dry.returncode == ExitCode.WARNING
    assert json.loads(dry.stdout)["partial_restores"] == [f"{copy}.t"]
    assert len(list(detached.glob("casbackup_partial_*"))) == 1  # a dry run removes nothing

    if then == "clean":
        cleaned = subprocess.run(clean, capture_output=True, text=True)
        assert cleaned.returncode == ExitCode.WARNING
        assert (
            f"warning: {copy}.t holds only some of the parts a restore was attaching when it "
            "stopped: run that restore again with --drop-existing to restore it whole"
        ) in cleaned.stderr
        assert "nothing to clean" not in cleaned.stdout
        assert list(detached.iterdir()) == []
    else:
        whole = subprocess.run([*restore, "--drop-existing"], capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr
        assert server_engine.value(f"SELECT sum(x) FROM {copy}.t") == sum(range(4000))
    again = subprocess.run([*clean, "--json"], capture_output=True)
    assert again.returncode == 0, again.stderr  # reported once, or restored whole
    assert json.loads(again.stdout)["partial_restores"] == []
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_a_restore_killed_right_after_its_first_attach_is_reported_partial(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """Killed as the first of two ATTACH PARTs returns: the table holds half its rows.

    Nothing had marked the table partial yet at that moment; `clean` and the
    next restore must say so all the same."""
    db, copy = "t_kill_first_attached", "t_kill_first_attached_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 40, _DIE_AFTER_ATTACH)
    assert 0 < server_engine.value(f"SELECT count() FROM {copy}.t") < 4000
    restore = [*CASBACKUP, *base, "restore", "b", "--as", f"{db}:{copy}"]
    refused = subprocess.run(restore, capture_output=True, text=True)
    assert refused.returncode == ExitCode.CONFLICT
    assert "only some of it" in refused.stderr
    cleaned = subprocess.run([*CASBACKUP, *base, "clean", "--json"], capture_output=True)
    assert cleaned.returncode == ExitCode.WARNING
    assert json.loads(cleaned.stdout)["partial_restores"] == [f"{copy}.t"]
    assert list(detached.iterdir()) == []
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_clean_warns_of_a_partial_marker_only_where_its_restore_attached_parts(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """A restore marks a table just before its first ATTACH: killed before that ATTACH
    landed, it leaves a marker where it attached nothing, which is no partial table.

    Markers of dead restores here: one of --partitions 202402 (empty in the copy),
    one of 202401 (which holds the parts)."""
    db, copy = "t_partial_scope", "t_partial_scope_copy"
    base = _backed_up_table(server_engine, tmp_path, db, 40)  # partitions 202401, 202402
    restore = [*base, "restore", "b", "--as", f"{db}:{copy}", "--partitions", "202401"]
    subprocess.run([*CASBACKUP, *restore], check=True, capture_output=True)
    data_path = server_engine.value(
        f"SELECT data_path FROM system.tables WHERE database = '{copy}'"
    )
    detached = Path(data_path) / "detached"
    empty, holding = (detached / f"casbackup_partial_99999999{n}_1_ab12" for n in (1, 2))
    for marker, partition in ((empty, "202402"), (holding, "202401")):
        marker.mkdir()
        (marker / partition).touch()

    cleaned = subprocess.run([*CASBACKUP, *base, "clean", "--json"], capture_output=True)
    assert cleaned.returncode == ExitCode.WARNING
    report = json.loads(cleaned.stdout)
    assert report["partial_restores"] == [f"{copy}.t"]
    assert report["temp_parts"] == [str(empty)]
    assert list(detached.iterdir()) == []
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_a_partitions_restore_run_again_with_drop_existing_is_not_reported_partial(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """The note's advice followed for a --partitions restore: nothing says the table is partial.

    Stopped after the first of its two ATTACHes, the restore leaves its
    marker and says to run it again with --drop-existing; that restores
    those partitions whole, and the marker must go with it, or `clean` warns
    of a table restored whole (exit 1)."""
    db, copy = "t_term_partial_parts", "t_term_partial_parts_copy"
    base = _backed_up_table(server_engine, tmp_path, db, 40)  # partitions 202401, 202402
    restore = [*base, "restore", "b", "--as", f"{db}:{copy}", "--partitions", "202401,202402"]
    stopped = subprocess.run(
        [sys.executable, "-c", _TERM_BEFORE_ATTACH, *restore], capture_output=True, text=True
    )
    assert stopped.returncode == ExitCode.INTERRUPTED, stopped.stderr
    assert "run the same restore again with --drop-existing" in stopped.stderr
    data_path = server_engine.value(
        f"SELECT data_path FROM system.tables WHERE database = '{copy}'"
    )
    detached = Path(data_path) / "detached"
    assert len(list(detached.glob("casbackup_partial_*"))) == 1
    whole = subprocess.run(
        [*CASBACKUP, *restore, "--drop-existing"], capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr
    assert server_engine.value(f"SELECT sum(x) FROM {copy}.t") == sum(range(4000))
    assert list(detached.glob("casbackup_partial_*")) == []
    cleaned = subprocess.run([*CASBACKUP, *base, "clean", "--json"], capture_output=True)
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["partial_restores"] == []
    # Dead restores' markers of the whole table and of another partition are not about these.
    others = [detached / f"casbackup_partial_99999999{n}_1_ab12" for n in (1, 2)]
    for marker in others:
        marker.mkdir()
    (others[1] / "202403").touch()
    again = subprocess.run([*CASBACKUP, *restore, "--drop-existing"], capture_output=True)
    assert again.returncode == 0, again.stderr
    assert sorted(detached.glob("casbackup_partial_*")) == others
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_clean_resumes_the_merges_a_killed_restore_paused(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """Restore pauses the table's merges while it attaches; killed, it cannot resume them."""
    db, copy = "t_kill_merges", "t_kill_merges_copy"
    base, detached = _restore_killed(server_engine, tmp_path, db, 20, _DIE_AFTER_ATTACH)
    cleaned = subprocess.run(
        [*CASBACKUP, *base, "clean", "--json"], capture_output=True, text=True, check=True
    )
    for x in range(3):
        server_engine.sql(f"INSERT INTO {copy}.t SELECT toDate('2024-01-05'), {x}")
    server_engine.sql(f"OPTIMIZE TABLE {copy}.t FINAL")  # "Cancelled merging parts" if paused
    assert (
        server_engine.value(
            f"SELECT count() FROM system.parts WHERE database = '{copy}' AND active"
        )
        == 1
    )
    assert json.loads(cleaned.stdout)["merges_resumed"] == [f"{copy}.t"]
    assert list(detached.iterdir()) == []
    for name in (db, copy):
        server_engine.sql(f"DROP DATABASE {name}")


def test_clean_goes_on_past_merges_it_cannot_resume(
    server_engine: ServerEngine, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One table's SYSTEM START MERGES failing: a warning, its marker kept, the other resumed.

    A third table's merges stay stopped while a restore that is alive (this
    process) has them stopped too, beside a dead restore's marker."""
    db = "t_clean_merges_fail"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    server_engine.sql(f"CREATE DATABASE {db}")
    markers = {}
    for name in ("a", "b", "c", "d"):
        server_engine.sql(f"CREATE TABLE {db}.{name} (x UInt64) ENGINE = MergeTree ORDER BY x")
        data_path = server_engine.value(
            f"SELECT data_path FROM system.tables WHERE database = '{db}' AND name = '{name}'"
        )
        markers[name] = Path(data_path) / "detached" / "casbackup_merges_paused_999999999_1_ab12"
        markers[name].mkdir(parents=True)  # a killed restore's, its process long gone
    live = markers["c"].with_name(f"casbackup_merges_paused_{ProcessTag.current()}_cd34")
    live.mkdir()
    markers["d"].with_name("casbackup_merges_paused_999999998_1_ef56").mkdir()  # two dead ones
    real = ClickHouseServer.execute

    def refuse_a(self: ClickHouseServer, sql: str, *args: Any, **kwargs: Any) -> None:
        if sql.startswith("SYSTEM START MERGES") and sql.endswith(".`a`"):
            raise ClickHouseError(detail="Not enough privileges")
        real(self, sql, *args, **kwargs)

    monkeypatch.setattr(ClickHouseServer, "execute", refuse_a)
    assert cli(None, "init").code == 0
    cleaned = cli(server_engine, "clean", "--json")
    assert cleaned.code == ExitCode.WARNING, cleaned.stderr
    assert f"could not resume the merges of {db}.a" in cleaned.stderr
    assert cleaned.json()["merges_resumed"] == [f"{db}.b", f"{db}.d"]  # d resumed once
    assert markers["a"].exists() and not markers["b"].exists()  # the next clean tries again
    assert list(markers["d"].parent.iterdir()) == []
    assert markers["c"].exists() and live.exists()
    assert sorted(cleaned.json()["in_use"]) == sorted([str(markers["c"]), str(live)])
    server_engine.sql(f"DROP DATABASE {db}")


def test_clean_leaves_a_running_backups_shadow_alone(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    db = "t_clean_live"
    server_engine.sql(f"DROP DATABASE IF EXISTS {db}")
    _big_table(server_engine, db)
    repo = tmp_path / "repo"
    subprocess.run([*CASBACKUP, "--repo", str(repo), "init"], check=True, capture_output=True)
    process = _start_backup(server_engine, repo, db, "live")
    _wait_for_shadow(server_engine, process)
    os.kill(process.pid, signal.SIGSTOP)  # hold it mid-backup
    try:
        cleaned = subprocess.run(
            [*CASBACKUP, "--repo", str(repo), "--clickhouse", server_engine.url, "clean", "--json"],
            capture_output=True,
            text=True,
        )
        document = __import__("json").loads(cleaned.stdout)
        assert document["shadows"] == [] and len(document["in_use"]) == 1
        assert server_engine.shadow_dirs() != []
    finally:
        os.kill(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert server_engine.shadow_dirs() == []
    server_engine.sql(f"DROP DATABASE {db}")


CHDB_SETUP = """
import sys
from chdb import session
s = session.Session(sys.argv[1])
s.query("CREATE DATABASE IF NOT EXISTS big")
s.query("CREATE TABLE IF NOT EXISTS big.t (id UInt64, payload String) ENGINE = MergeTree PARTITION BY id % 8 ORDER BY id")
s.query("INSERT INTO big.t SELECT number, concat(toString(rand64()), toString(rand64())) FROM numbers(4000000)")
s.close()
"""


def test_kill_9_then_clean_on_chdb(tmp_path: Path) -> None:
    """chdb locks its directory to one process: each step here is its own process."""
    pytest.importorskip("chdb")
    data = tmp_path / "chdb"
    repo = tmp_path / "repo"
    subprocess.run([sys.executable, "-c", CHDB_SETUP, str(data)], check=True, capture_output=True)
    url = f"chdb://{data}"
    subprocess.run([*CASBACKUP, "--repo", str(repo), "init"], check=True, capture_output=True)
    process = subprocess.Popen(
        [*CASBACKUP, "--repo", str(repo), "--clickhouse", url, "create", "killed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    shadow = data / "shadow"
    deadline = time.monotonic() + 120
    while not list(shadow.glob("casbackup_*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[
            1
        ].decode()
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert list(shadow.glob("casbackup_*"))
    cleaned = subprocess.run(
        [*CASBACKUP, "--repo", str(repo), "--clickhouse", url, "clean"],
        capture_output=True,
        text=True,
    )
    assert cleaned.returncode == 0, cleaned.stderr
    assert not list(shadow.glob("casbackup_*"))


# --- bad input ----------------------------------------------------------------------------


def test_unreachable_server(cli: Any, tmp_path: Path) -> None:
    cli(None, "init")
    port = free_port()
    result = cli(None, "--clickhouse", f"clickhouse://default@127.0.0.1:{port}", "create")
    assert result.code == ExitCode.CLICKHOUSE_CONNECT
    one_line_error(result.stderr)
    assert f"cannot reach ClickHouse at clickhouse://default@127.0.0.1:{port}" in result.stderr


def _in_a_new_repository(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``casbackup --clickhouse URL ARGS`` in a process of its own, on a new repository.

    The timeout only keeps a regression that hangs from hanging the suite."""
    repo = tmp_path / "repo"
    subprocess.run([*CASBACKUP, "--repo", str(repo), "init"], check=True, capture_output=True)
    return subprocess.run(
        [*CASBACKUP, "--repo", str(repo), "--clickhouse", url, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unreachable_server_is_one_line_from_a_real_process(tmp_path: Path) -> None:
    """In a process of its own, where no test harness has taken over logging first.

    clickhouse-driver logs every failed connection attempt with a traceback;
    in-process, pytest's log capture swallowed it, so only a real process shows it.
    """
    url = f"clickhouse://default@127.0.0.1:{free_port()}"
    result = _in_a_new_repository(tmp_path, url, "create")
    assert result.returncode == ExitCode.CLICKHOUSE_CONNECT
    one_line_error(result.stderr)
    assert f"cannot reach ClickHouse at {url}" in result.stderr


def test_the_http_port_is_refused_within_the_connect_timeout(
    server_engine: ServerEngine, tmp_path: Path
) -> None:
    """The HTTP port accepts the connection and never answers the native greeting: the
    command waited send_receive_timeout (an hour by default) without a word."""
    url = f"clickhouse://default@127.0.0.1:{server_engine.http_port}?connect_timeout=2"
    result = _in_a_new_repository(tmp_path, url, "tables")
    assert result.returncode == ExitCode.CLICKHOUSE_CONNECT, result.stderr
    one_line_error(result.stderr)
    assert "within connect_timeout (2 s)" in result.stderr
    assert "native protocol port" in result.stderr


def test_a_host_that_never_answers_the_connection_is_not_called_the_wrong_port(
    tmp_path: Path,
) -> None:
    """A TCP connect that times out (a firewall dropping SYNs; here a listener whose
    backlog is full) raises the driver's same SocketTimeoutError as a missing greeting:
    the error said 'no greeting … is this ClickHouse's native protocol port?' of a host
    that never accepted the connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:  # fill the accept queue: later SYNs are dropped
                filler.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    filler.connect(("127.0.0.1", port))
            url = f"clickhouse://default@127.0.0.1:{port}?connect_timeout=1"
            result = _in_a_new_repository(tmp_path, url, "tables")
        finally:
            for filler in fillers:
                filler.close()
    assert result.returncode == ExitCode.CLICKHOUSE_CONNECT, result.stderr
    one_line_error(result.stderr)
    assert "no connection or no greeting within connect_timeout (1 s)" in result.stderr


def test_wrong_password_is_refused_and_never_printed(server_engine: ServerEngine, cli: Any) -> None:
    cli(None, "init")
    url = f"clickhouse://{PROTECTED_USER}:wrong-{PROTECTED_PASSWORD}@127.0.0.1:{server_engine.tcp_port}"
    result = cli(None, "-vv", "--clickhouse", url, "tables")
    assert result.code == ExitCode.CLICKHOUSE_CONNECT
    one_line_error(result.stderr)
    assert f"refused the credentials of user '{PROTECTED_USER}'" in result.stderr
    assert PROTECTED_PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "clickhouse://backup:Qx7z#Kv9w@127.0.0.1:9000",
        "clickhouse://backup:12345?Kv9w@127.0.0.1:9000",
        "clickhouse://default@127.0.0.1:9000/?connect_timeout=-1",
        "clickhouse://default@127.0.0.1:9000/?send_receive_timeout=nan",
    ],
)
def test_a_bad_clickhouse_url_is_a_configuration_error_that_hides_the_password(
    cli: Any, url: str
) -> None:
    result = cli(None, "--clickhouse", url, "tables")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    for secret in ("Qx7z", "Kv9w", "12345"):
        assert secret not in result.stderr


def test_password_from_environment(
    server_engine: ServerEngine, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_engine.sql("CREATE DATABASE IF NOT EXISTS t_pwenv")
    server_engine.sql(
        "CREATE TABLE IF NOT EXISTS t_pwenv.t (x UInt8) ENGINE = MergeTree ORDER BY x"
    )
    monkeypatch.setenv("CASBACKUP_CLICKHOUSE_PASSWORD", PROTECTED_PASSWORD)
    url = f"clickhouse://{PROTECTED_USER}@127.0.0.1:{server_engine.tcp_port}"
    result = cli(None, "--clickhouse", url, "tables", "--tables", "t_pwenv.*", "--json")
    assert result.code == 0, result.stderr
    assert PROTECTED_PASSWORD not in result.stdout + result.stderr
    server_engine.sql("DROP DATABASE t_pwenv")


def test_missing_repository(engine: Engine, cli: Any, tmp_path: Path) -> None:
    result = cli(engine, "list", repo=tmp_path / "nowhere")
    assert result.code == ExitCode.NOT_FOUND
    one_line_error(result.stderr)
    assert "casbackup init" in result.stderr


def test_init_twice(cli: Any) -> None:
    assert cli(None, "init").code == 0
    result = cli(None, "init")
    assert result.code == ExitCode.CONFLICT
    one_line_error(result.stderr)


def test_init_with_an_unusable_catalog_url_writes_no_repository(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fixing the URL and running init again must work, not say "already exists"."""
    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here")
    monkeypatch.setenv("CASBACKUP_CATALOG", "mysql+pymysql://u:Sekr3t@db/cat")
    result = cli(None, "init")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert "pymysql" in result.stderr and "Sekr3t" not in result.stderr
    (tmp_path / "a-directory").mkdir()
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'a-directory'}")
    result = cli(None, "init")
    assert result.code == ExitCode.CATALOG
    one_line_error(result.stderr)
    assert not (tmp_path / "repo").exists()
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    assert cli(None, "init").code == 0


def test_init_that_fails_to_write_the_repository_can_be_run_again(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured catalog is bound to the new repository's id before the store is
    written. When that write failed, the catalog stayed bound to an id no repository
    has, and every later init was refused: "catalog indexes another repository"."""
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    repo = tmp_path / "repo"
    repo.mkdir()
    with unwritable(repo):
        result = cli(None, "init")
        assert result.code == ExitCode.TARGET_FILES or result.code == ExitCode.STORE, result
        one_line_error(result.stderr)
    assert not (tmp_path / "catalog.sqlite").exists()  # created by this init: removed
    created = cli(None, "init", "--json")
    assert created.code == 0, created.stderr
    assert cli(None, "list", "--json").json() == []


def test_init_refused_creates_no_catalog_file(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init of an existing repository is refused before any catalog is opened or created."""
    assert cli(None, "init").code == 0
    monkeypatch.setenv("CASBACKUP_CATALOG", f"sqlite:///{tmp_path / 'other.sqlite'}")
    result = cli(None, "init")
    assert result.code == ExitCode.CONFLICT
    assert not (tmp_path / "other.sqlite").exists()


def test_no_table_matches(engine: Engine, cli: Any) -> None:
    cli(engine, "init")
    result = cli(engine, "create", "--tables", "no_such_db.*")
    assert result.code == ExitCode.NOT_FOUND
    one_line_error(result.stderr)
    assert "no tables match no_such_db.*" in result.stderr


def test_unknown_backup(engine: Engine, cli: Any) -> None:
    cli(engine, "init")
    for command in (["restore", "nope"], ["show", "nope"]):
        result = cli(engine, *command)
        assert result.code == ExitCode.NOT_FOUND
        one_line_error(result.stderr)
        assert "no backup named 'nope'" in result.stderr


def test_duplicate_and_invalid_backup_names(engine: Engine, dbname: str, cli: Any) -> None:
    create_realistic(engine, dbname, rows=100)
    cli(engine, "init")
    assert cli(engine, "create", "same", "--tables", f"{dbname}.agg").code == 0
    duplicate = cli(engine, "create", "same", "--tables", f"{dbname}.agg")
    assert duplicate.code == ExitCode.CONFLICT
    one_line_error(duplicate.stderr)
    invalid = cli(engine, "create", "../escape", "--tables", f"{dbname}.agg")
    assert invalid.code == ExitCode.USAGE
    one_line_error(invalid.stderr)
    assert engine.shadow_dirs() == []


def test_a_directory_where_the_manifest_belongs_stops_create_before_it_starts(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    """Not "no manifest": the backup would run whole, then fail to write its manifest."""
    create_realistic(engine, dbname, rows=100)
    cli(engine, "init")
    (tmp_path / "repo" / "manifests" / "b5").mkdir(parents=True)

    result = cli(engine, "create", "b5", "--tables", f"{dbname}.agg")
    assert result.code == ExitCode.INTEGRITY
    one_line_error(result.stderr)
    assert "manifests/b5 in the store at" in result.stderr and "is a directory" in result.stderr
    assert not (tmp_path / "repo" / "packs").exists()
    assert not list((tmp_path / "repo" / "locks").glob("*"))
    assert engine.shadow_dirs() == []


@pytest.mark.parametrize(
    "args, says",
    [
        (["list", "--bogus"], "No such option: --bogus (see 'casbackup list --help')"),
        (["lst"], "Did you mean 'list'? (see 'casbackup --help')"),
        (["restore"], "Missing argument 'name' (see 'casbackup restore --help')"),
        (["gc", "--repack-below", "5"], "Invalid value for '--repack-below'"),
        (["--repo"], "Option '--repo' requires an argument"),
    ],
)
def test_usage_errors_are_one_line(cli: Any, args: list[str], says: str) -> None:
    """click printed a usage block, a hint and "Error: ..." on three or more lines."""
    result = cli(None, *args)
    assert result.code == ExitCode.USAGE
    one_line_error(result.stderr)
    assert says in result.stderr


def test_a_group_called_alone_shows_its_help(cli: Any) -> None:
    result = cli(None, "catalog")
    assert result.code == ExitCode.USAGE  # click's no_args_is_help
    assert "Usage: casbackup catalog" in result.stderr and "rebuild" in result.stderr


def test_bad_mapping_argument(engine: Engine, cli: Any) -> None:
    cli(engine, "init")
    result = cli(engine, "restore", "x", "--as", "nocolon")
    assert result.code == ExitCode.USAGE
    one_line_error(result.stderr)


def test_clean_with_a_bad_margin_does_nothing_before_it_refuses(cli: Any) -> None:
    """It used to clean ClickHouse first: here its warning (no server listens) came before the error."""
    cli(None, "init")
    url = f"clickhouse://default@127.0.0.1:{free_port()}"
    result = cli(None, "--clickhouse", url, "clean", "--broken", "--margin", "bogus")
    assert result.code == ExitCode.USAGE
    one_line_error(result.stderr)
    assert "ClickHouse" not in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("[repository\nlocation = 1", "Expected ']'"),
        ("[repository]\ncompression_level = 99", "repository.compression_level"),
        ("[surprise]\nx = 1", "surprise"),
        ("[backup]\ntables = ['nodot']", "database.table"),
    ],
)
def test_bad_config_file(cli: Any, tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "casbackup.toml"
    config.write_text(content)
    result = cli(None, "--config", str(config), "init")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert message in result.stderr and str(config) in result.stderr


def test_config_file_that_is_not_utf8(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "casbackup.toml"
    config.write_bytes(b"\xff\xfe[repository]\n")
    result = cli(None, "--config", str(config), "list")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert "not UTF-8" in result.stderr and str(config) in result.stderr


def test_run_with_a_bad_read_data_subset_stops_before_it_starts(cli: Any, tmp_path: Path) -> None:
    """The config is refused at once: no ClickHouse is asked (none listens here), nothing backed up."""
    cli(None, "init")
    config = tmp_path / "casbackup.toml"
    config.write_text('[verify]\nread_data_subset = "200%"\n')
    url = f"clickhouse://default@127.0.0.1:{free_port()}"
    result = cli(None, "--config", str(config), "--clickhouse", url, "run")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert "verify.read_data_subset" in result.stderr and "--subset" not in result.stderr


@pytest.mark.parametrize("option", ["--repo", "--clickhouse", "--config"])
def test_an_empty_command_line_value_is_refused(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    """`--repo "$REPO"` with REPO unset used the current directory, and init wrote a repository there."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    result = cli(None, option, "", "init")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert f"{option} given an empty value" in result.stderr
    assert list(workdir.iterdir()) == [] and not (tmp_path / "repo").exists()


def test_empty_environment_variables_are_ignored(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty CASBACKUP_CONFIG exited 10 while other empty CASBACKUP_* variables were ignored."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    for variable in (
        "CASBACKUP_CONFIG",
        "CASBACKUP_REPO",
        "CASBACKUP_CLICKHOUSE",
        "CASBACKUP_CATALOG",
    ):
        monkeypatch.setenv(variable, "")
    result = cli(None, "init")
    assert result.code == 0, result.stderr
    assert (tmp_path / "repo" / "catalog.sqlite").exists()


def test_missing_config_file(cli: Any, tmp_path: Path) -> None:
    result = cli(None, "--config", str(tmp_path / "absent.toml"), "list")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)


def test_restore_into_server_with_corrupted_pack_is_an_integrity_error(
    engine: Engine, dbname: str, cli: Any, tmp_path: Path
) -> None:
    create_realistic(engine, dbname, rows=3000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    before = fingerprints(engine, [dbname])
    for pack in (tmp_path / "repo" / "packs").rglob("*"):
        if pack.is_file():
            flip_byte(pack, pack.stat().st_size // 2, 0xFF)
    engine.sql(f"DROP DATABASE {q(dbname)}")
    result = cli(engine, "restore", "b")
    assert result.code == ExitCode.INTEGRITY
    one_line_error(result.stderr)
    assert "corrupt" in result.stderr
    # Each table is all or nothing: either intact or empty, never half-restored or damaged.
    leftovers = fingerprints(engine, [dbname])
    assert any(f.rows == 0 for f in leftovers.values())
    for table, found in leftovers.items():
        assert found.rows == 0 or found == before[table], table
    for detached in engine.data_root.rglob("detached"):
        assert not list(detached.glob("casbackup_tmp_*"))


def test_restore_onto_a_full_disk_is_a_clear_error_and_stages_nothing(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing a staged part names the file, exits 21, and leaves no staged part."""
    create_realistic(engine, dbname, rows=3000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    real_pwrite = os.pwrite
    writes = itertools.count(1)

    def filling(fd: int, data: Any, offset: int) -> int:
        if next(writes) > 3:  # the disk fills up a few writes in
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", filling)
    result = cli(engine, "restore", "b", "--as", f"{dbname}:{dbname}_copy")
    assert result.code == ExitCode.TARGET_FILES == 21
    one_line_error(result.stderr)
    assert "cannot write " in result.stderr and "No space left on device" in result.stderr
    assert "/detached/casbackup_tmp_" in result.stderr
    for detached in engine.data_root.rglob("detached"):
        assert not list(detached.glob("casbackup_tmp_*"))


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_a_refused_rename_into_detached_is_exit_21(
    engine: Engine, dbname: str, cli: Any, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The last write of a restore; verify --restore stops on it too (the scratch disk, not the backup)."""
    create_realistic(engine, dbname, rows=3000)
    cli(engine, "init")
    assert cli(engine, "create", "b", "--tables", f"{dbname}.*").code == 0
    real_rename = os.rename

    def refusing(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if "/detached/" in str(target) and "casbackup_tmp_" in str(source):
            raise OSError(errno.EROFS, "Read-only file system")
        real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refusing)
    if command == "restore":
        result = cli(engine, "restore", "b", "--as", f"{dbname}:{dbname}_copy")
    else:
        result = cli(engine, "verify", "b", "--restore")
    assert result.code == ExitCode.TARGET_FILES
    if command == "restore":
        one_line_error(result.stderr)
    else:  # verify notes each table it checks on stderr first
        assert "Traceback" not in result.stderr
        one_line_error(result.stderr.splitlines(keepends=True)[-1])
    assert "/detached/" in result.stderr and result.stderr.endswith(": Read-only file system\n")
    for detached in engine.data_root.rglob("detached"):
        assert not list(detached.glob("casbackup_tmp_*"))
    assert not [db for (db,) in engine.sql("SHOW DATABASES") if db.startswith(SCRATCH_PREFIX)]


def test_a_chdb_directory_another_process_holds_is_one_line(chdb_engine: Engine) -> None:
    """chdb's engine printed its own `Code: 76 ... Cannot lock file` above casbackup's error."""
    held = subprocess.run(
        [*CASBACKUP, "--repo", "/nonexistent-repo", "--clickhouse", chdb_engine.url, "tables"],
        capture_output=True,
        text=True,
    )
    assert held.returncode == ExitCode.CLICKHOUSE_CONNECT
    one_line_error(held.stderr)
    assert "is another process using this data directory?" in held.stderr


def test_a_missing_chdb_config_file_is_a_configuration_error(cli: Any, tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'data'}?config={tmp_path / 'absent.xml'}"
    result = cli(None, "--clickhouse", url, "tables")
    assert result.code == ExitCode.CONFIG
    one_line_error(result.stderr)
    assert f"no config file {tmp_path / 'absent.xml'}" in result.stderr


@pytest.mark.parametrize(
    ("variable", "option"),
    [
        ("CASBACKUP_REPO", "--repo"),
        ("CASBACKUP_CLICKHOUSE", "--clickhouse"),
        ("CASBACKUP_CONFIG", "--config"),
    ],
)
def test_a_blank_environment_variable_is_named_in_the_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    option: str,
) -> None:
    """CASBACKUP_REPO=' ' was refused as '--repo given an empty value', an option nobody typed."""
    from casbackup.cli.main import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, "  ")
    code = run(["init"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG
    one_line_error(err)
    assert variable in err and f"{option} " not in err
    assert list(tmp_path.iterdir()) == []
