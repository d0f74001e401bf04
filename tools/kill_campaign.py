#!/usr/bin/env python3
"""A randomized SIGKILL campaign: kill casbackup commands at random moments, then check the promise.

    .venv/bin/python tools/kill_campaign.py --engine server --kills 150 --out /tmp/camp
    .venv/bin/python tools/kill_campaign.py --engine chdb --kills 150 --out /tmp/camp --seed 7
    .venv/bin/python tools/kill_campaign.py --engine server --only restore_as --kills 40 --out /tmp/camp
    .venv/bin/python tools/kill_campaign.py --engine chdb --store s3 --kills 100 --out /tmp/camp

The promise (README.md): a failed or killed run never loses or corrupts
anything already committed, and leaves nothing behind that the next run or
`casbackup clean` does not remove. tests/cli/test_failures.py kills at a few
fixed points; this kills at a random moment within each command's
measured unkilled duration, against a private ClickHouse 18.16 server
(tools/clickhouse_server.py) or chdb (each step its own process: chdb locks
its directory to one process; it runs under a users.xml with access
management, so `create --rbac` / `restore --rbac`, in the mix on chdb only,
have entities to capture). The repository is a local directory, or with
--store s3 a prefix of a bucket on moto's S3 server on loopback
(tests/s3server.py), with multipart uploads from 5 MiB and a table of
--blob-mb (default 6) incompressible MiB made anew before each create, so
that packs go up in parts and a kill can leave an upload open.

Kill moments (--timing work, the default): start-up (Python, imports, config)
ends at the first line of `-v` log output, or when a `list` would have ended
if that is earlier; one kill in ten lands uniformly in the start-up, the
others uniformly between its end and the measured duration. --timing
uniform is the first campaign's uniform moment in [0, duration]. --timing
attach aims at the ATTACH window of the commands that attach parts (restore,
verify --restore; the others keep --timing work): the table directories'
detached/ are polled and the command is killed 0-3 ms after the k-th
`casbackup_attaching_` marker appears (k uniform up to the parts of the
source tables, so some runs end first), or, on modern engines one round in
three, after the k-th part ClickHouse's ATTACH PART renamed to
`attaching_<part>` (on chdb, the engine inside the killed process, that
kills ClickHouse mid-ATTACH; 18.16 moves the part straight out of detached/).
Use a table of many parts (--parts) for kills all along the window.

Each round: prepare (churn before `create`, a free target before `restore
--as`), run one command as `python -m casbackup`, SIGKILL it, run `clean`
and `clean --broken --margin 1s`, then check:

- every backup committed before the kill is still listed (but the one a
  `delete` named) and passes `verify --read-data` (every few rounds also
  `verify NAME --restore`);
- nothing is left: no `shadow/casbackup_*`, no `casbackup_*` or
  `attaching_*` under any `detached/` (a partial-restore marker only if
  clean reported it), no
  `_casbackup_verify_*` database, nothing under the repository's locks/, no
  `.tmp-` store temporaries or open multipart uploads (`clean --broken
  --margin 1s` aborts those older than a second), no `.catalog*`/
  `catalog.sqlite-*` file beside the catalog, and no
  `casbackup_merges_paused_` marker (stopped merges are not probed on the
  server otherwise; chdb forgets STOP MERGES with its process);
- every object in the store is accounted for: `config`, a manifest of a
  listed backup, a pack the catalog indexes (`clean --broken` indexes and
  condemns a killed run's unrecorded packs; gc frees unused ones), a lock
  (reported above) or a gc mark under `condemned/`;
- the same command run again unkilled succeeds (a restore refused because a
  killed one left data is run again with --drop-existing, as its message
  says), and leaves no hidden `.casbackup_tmp_` config files behind.

Every round is one JSON line in OUT/<engine>[-s3]/rounds.jsonl (command,
measured duration and start-up, kill moment and phase, whether the kill came
after the command had ended, violations); violations are also printed. A summary per command is printed
at the end. --deadline HH:MM (UTC) stops the campaign in time; SIGTERM
stops it too (and the servers it started). A round takes 8-20 s (S3 and
chdb the slowest): run one campaign at a time. To reproduce a violation, kill at a fixed point instead
(tests/cli/test_failures.py, `_attach_patched`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PYTHON = str(ROOT / ".venv" / "bin" / "python")
CASBACKUP = [PYTHON, "-m", "casbackup"]
DB = "camp"
COPY = "camp_r"
TIMEOUT_S = 600

# One statement list run by a fresh chdb process (chdb locks its directory).
_CHDB_RUNNER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.engines import ChdbEngine
engine = ChdbEngine(Path(sys.argv[1]))
if sys.argv[4]:  # a server config (users.xml with access management, for --rbac)
    from chdb import session
    engine._session = session.Session(f"{sys.argv[1]}?config-file={sys.argv[4]}")
else:
    engine.start()
try:
    if sys.argv[3] == "setup":
        from tests.clickhouse.schema import create_realistic
        create_realistic(engine, json.loads(sys.stdin.read())["db"], json.loads(sys.argv[5]))
        print("[]")
    else:
        print(json.dumps([engine.sql(q) for q in json.loads(sys.stdin.read())], default=str))
finally:
    engine.stop()
"""


# --- engines ----------------------------------------------------------------------------------


class Target:
    """What the campaign needs of an engine: a URL, a data directory, statements."""

    name: str
    url: str
    data_root: Path
    modern: bool

    def sql(self, queries: list[str]) -> list[list[tuple[Any, ...]]]:
        raise NotImplementedError

    def setup(self, rows: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class ServerTarget(Target):
    def __init__(self, root: Path) -> None:
        from tests.engines import ServerEngine

        self.engine: Any = ServerEngine(root)  # an Engine of tests/clickhouse/schema.py
        self.engine.start()
        self.name, self.url, self.modern = "server", self.engine.url, False
        self.data_root = self.engine.data_root

    def sql(self, queries: list[str]) -> list[list[tuple[Any, ...]]]:
        return [self.engine.sql(q) for q in queries]

    def setup(self, rows: int) -> None:
        from tests.clickhouse.schema import create_realistic

        create_realistic(self.engine, DB, rows)

    def stop(self) -> None:
        self.engine.stop()


class ChdbTarget(Target):
    """chdb under a users.xml with access management, so `--rbac` has entities to capture."""

    def __init__(self, root: Path) -> None:
        from tests.cli.test_server_state import write_access_config

        root.mkdir(parents=True, exist_ok=True)
        self.data_root = root / "data"
        self.config_file = write_access_config(root)
        self.name, self.modern = "chdb", True
        self.url = f"chdb://{self.data_root}?config={self.config_file}"

    def _run(self, mode: str, stdin: str, *extra: str) -> str:
        done = subprocess.run(
            [
                PYTHON,
                "-c",
                _CHDB_RUNNER,
                str(self.data_root),
                str(ROOT),
                mode,
                str(self.config_file),
                *extra,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"chdb {mode} failed: {done.stderr[-2000:]}")
        return done.stdout

    def sql(self, queries: list[str]) -> list[list[tuple[Any, ...]]]:
        out = self._run("sql", json.dumps(queries))
        return [[tuple(r) for r in rows] for rows in json.loads(out.strip().splitlines()[-1])]

    def setup(self, rows: int) -> None:
        self._run("setup", json.dumps({"db": DB}), json.dumps(rows))


# --- stores ------------------------------------------------------------------------------------


class LocalRepo:
    """The repository in a local directory, its catalog beside it (the default layout)."""

    name = "local"

    def __init__(self, work: Path) -> None:
        self.root = work / "repo"
        self.location = str(self.root)
        self.catalog = self.root / "catalog.sqlite"

    def config_lines(self) -> str:
        return ""

    def objects(self) -> dict[str, int]:
        """Every file of the repository but the catalog's, by store key."""
        if not self.root.is_dir():
            return {}
        return {
            str(p.relative_to(self.root)): p.stat().st_size
            for p in self.root.rglob("*")
            if p.is_file()
            and not p.name.startswith((".tmp-", ".catalog"))  # leftovers() reports these
            and not (p.parent == self.root and p.name.startswith("catalog.sqlite"))
        }

    def open_uploads(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.root.rglob(".tmp-*")]

    def stop(self) -> None:
        pass


class S3Repo:
    """The repository under a prefix of a bucket on moto's server on loopback (tests/s3server.py).

    Credentials, region and endpoint reach casbackup through boto3's standard
    environment, as in tests/cli/test_s3.py; the catalog is a SQLite file in
    the work directory (``[catalog] url``), so its debris is checked there.
    Multipart uploads start at 5 MiB (S3's least) so that packs of a `create`
    go up in parts and a kill can leave an upload open. moto (5.x) reports
    every upload as initiated on 2010-11-10, so even plain `clean` (1 h)
    aborts them here: the open-upload check cannot catch a wrong margin.
    """

    name = "s3"
    PREFIX = "camp/repo"

    def __init__(self, work: Path) -> None:
        from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

        self.server = S3Server(work)
        self.server.start()
        for variable in list(os.environ):
            if variable.startswith("AWS_"):
                del os.environ[variable]
        os.environ.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE="/nonexistent/casbackup-camp/config",
            AWS_SHARED_CREDENTIALS_FILE="/nonexistent/casbackup-camp/credentials",
            AWS_ENDPOINT_URL_S3=self.server.endpoint,
        )
        self.bucket = "casbackup-camp"
        self.server.client().create_bucket(Bucket=self.bucket)
        self.location = f"s3://{self.bucket}/{self.PREFIX}"
        (work / "catalog").mkdir(parents=True, exist_ok=True)
        self.catalog = work / "catalog" / "catalog.sqlite"

    def config_lines(self) -> str:
        return (
            f'[catalog]\nurl = "sqlite:///{self.catalog}"\n'
            "[s3]\nmultipart_threshold_mb = 5\nmultipart_chunk_mb = 5\nconcurrency = 2\n"
        )

    def objects(self) -> dict[str, int]:
        keys = self.server.keys(self.bucket)
        return {k.removeprefix(self.PREFIX + "/"): size for k, size in keys.items()}

    def open_uploads(self) -> list[str]:
        """Multipart uploads neither completed nor aborted, anywhere in the bucket."""
        found: list[str] = []
        pages = self.server.client().get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket):
            found += [f"{u['Key']} ({u['UploadId'][:12]})" for u in page.get("Uploads", ())]
        return found

    def stop(self) -> None:
        self.server.stop()


# --- the campaign ----------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False
    trigger: str = ""  # --timing attach: what the kill waited for


@dataclass
class Campaign:
    target: Target
    store: LocalRepo | S3Repo
    work: Path
    rng: random.Random
    verify_restore_every: int
    timing: str = "work"
    blob_mb: int = 0
    parts: int = 0
    durations: dict[str, float] = field(default_factory=dict)
    startups: dict[str, float] = field(default_factory=dict)
    rbac_backups: set[str] = field(default_factory=set)
    list_seconds: float | None = None
    counter: int = 0
    rounds: int = 0
    log: Any = None

    @property
    def config(self) -> Path:
        return self.work / "casbackup.toml"

    @property
    def etc(self) -> Path:
        return self.work / "etc"

    @property
    def files_target(self) -> Path:
        return self.work / "files"

    @property
    def access(self) -> Path:
        return self.work / "access"

    def base(self) -> list[str]:
        return [
            "--config",
            str(self.config),
            "--repo",
            self.store.location,
            "--clickhouse",
            self.target.url,
        ]

    def casbackup(self, *args: str, check: bool = False) -> Outcome:
        started = time.monotonic()
        done = subprocess.run(
            [*CASBACKUP, *self.base(), *args], capture_output=True, text=True, timeout=TIMEOUT_S
        )
        outcome = Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        if check and done.returncode not in (0, 1):
            raise RuntimeError(f"casbackup {' '.join(args)}: exit {done.returncode}: {done.stderr}")
        return outcome

    def timed(self, args: list[str]) -> tuple[Outcome, float]:
        """Run ``args`` with ``-v`` unkilled; also when start-up ended, as far as can be seen.

        Python's start-up and imports print nothing. Start-up ends at the first
        line of -v log output, or, for commands that log late or not at all
        (gc, delete, restore on chdb), when a `list` (imports, config, store
        and catalog opened, no ClickHouse) would have ended.
        """
        started = time.monotonic()
        with tempfile.TemporaryFile("w+") as out:
            process = subprocess.Popen(
                [*CASBACKUP, "-v", *self.base(), *args],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert process.stderr is not None
            first: float | None = None
            lines: list[str] = []
            for line in process.stderr:
                if first is None:
                    first = time.monotonic() - started
                lines.append(line)
            process.wait(timeout=TIMEOUT_S)
            seconds = time.monotonic() - started
            out.seek(0)
            outcome = Outcome(process.returncode, out.read(), "".join(lines), seconds)
        if self.list_seconds is None:
            self.list_seconds = min(self.casbackup("list", "--json").seconds for _ in range(3))
        return outcome, min(seconds if first is None else first, self.list_seconds)

    def kill_moment(self, command: str) -> tuple[float, str]:
        """When to kill ``command``, and in which phase that is.

        --timing uniform: anywhere in the measured duration (the first
        campaign's choice; many kills then land in Python's start-up).
        --timing work: one kill in ten in the start-up (up to the first -v
        log line), the others uniformly in the rest of the run.
        """
        duration = self.durations[command]
        if self.timing == "uniform":
            return self.rng.uniform(0, duration), "any"
        if self.timing == "attach" and command in ATTACHING:
            return duration, "attach"  # a fallback; killed_at watches detached/ instead
        startup = min(self.startups[command], 0.9 * duration)
        if self.rng.random() < 0.1:
            return self.rng.uniform(0, startup), "start-up"
        return self.rng.uniform(startup, duration), "work"

    def killed_at(self, args: list[str], at: float, phase: str = "") -> Outcome:
        """Run ``args``, SIGKILL it ``at`` seconds after its start (unless it ended before).

        In the "attach" phase, at the k-th ATTACH seen under detached/ instead.
        """
        trigger = ""
        if phase == "attach":  # asked before: chdb's directory is the command's while it runs
            # 18.16's ATTACH PART moves the part straight out of detached/.
            renames = self.target.modern and self.rng.random() < 1 / 3
            prefix = "attaching_" if renames else "casbackup_attaching_"
            wanted = self.rng.randint(1, max(1, self.source_parts(args)))
            trigger = f"{prefix}#{wanted}"
        started = time.monotonic()
        process = subprocess.Popen(
            [*CASBACKUP, "-v", *self.base(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
            # Drained meanwhile: a -v restore of thousands of parts fills a pipe.
            pumps = [
                threading.Thread(target=shutil.copyfileobj, args=(stream, sink), daemon=True)
                for stream, sink in ((process.stdout, out_file), (process.stderr, err_file))
            ]
            for pump in pumps:
                pump.start()
            if phase == "attach":
                self.kill_in_attach(process, prefix, wanted)
            else:
                try:
                    process.wait(timeout=at)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
            process.wait(timeout=TIMEOUT_S)
            for pump in pumps:
                pump.join(timeout=TIMEOUT_S)
            out_file.seek(0)
            err_file.seek(0)
            out, err = out_file.read(), err_file.read()
        return Outcome(
            process.returncode,
            out,
            err,
            time.monotonic() - started,
            killed=process.returncode == -signal.SIGKILL,
            trigger=trigger,
        )

    def detached_dirs(self) -> list[Path]:
        root = self.target.data_root
        return [*root.glob("data/*/*/detached"), *root.glob("store/*/*/detached")]

    def kill_in_attach(self, process: subprocess.Popen[str], prefix: str, wanted: int) -> None:
        """SIGKILL ``process`` 0-3 ms after the ``wanted``-th entry named ``prefix``… under detached/.

        casbackup marks each part it attaches with a `casbackup_attaching_`
        directory from before its rename into place until after ATTACH PART;
        ClickHouse's ATTACH renames the part to `attaching_<part>` while it
        takes it in. Polled: a run with fewer ends unkilled.
        """
        seen: set[str] = set()
        dirs: list[Path] = []
        rescanned = 0.0
        while process.poll() is None:
            now = time.monotonic()
            if now - rescanned > 0.05:  # tables are created (and dropped) as the command runs
                dirs, rescanned = self.detached_dirs(), now
            for detached in dirs:
                try:
                    names = os.listdir(detached)
                except OSError:
                    continue
                seen.update(f"{detached}/{n}" for n in names if n.startswith(prefix))
            if len(seen) >= wanted:
                spin = time.perf_counter() + self.rng.uniform(0, 0.003)
                while time.perf_counter() < spin:
                    pass
                process.send_signal(signal.SIGKILL)
                return
            time.sleep(0.0002)

    def source_parts(self, args: list[str]) -> int:
        """Active parts of the tables ``args`` restores: about as many ATTACHes as it runs."""
        tables = " AND table LIKE 'events%'" if "--partitions" in args else ""
        rows = self.target.sql(
            [f"SELECT count() FROM system.parts WHERE database = '{DB}' AND active{tables}"]
        )
        return int(rows[0][0][0])

    # --- setup -------------------------------------------------------------------------------

    def setup(self, rows: int) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        for i in range(40):
            sub = self.etc / ("config.d" if i % 2 else "users.d")
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.xml").write_text(f"<yandex><!-- {i} -->{'x' * (i * 50)}</yandex>\n")
        self.config.write_text(
            "[backup]\n"
            f'configs = true\nconfigs_path = "{self.etc}"\n'
            '[gc]\nmin_age = "1s"\n'
            '[verify]\nread_data_subset = "20%"\nrestore = false\n' + self.store.config_lines()
        )
        self.access.mkdir(parents=True, exist_ok=True)  # what `--access-path` points at
        (self.access / "users.list").write_bytes(b"\x01binary index")
        for i in range(3):
            (self.access / f"{i:08x}.sql").write_text(
                f"ATTACH USER u{i} IDENTIFIED WITH no_password;\n"
            )
        self.target.setup(rows)
        if self.parts:
            self.many_parts(self.parts)
        self.casbackup("init", check=True)
        for _ in range(4):  # `delete` takes the oldest of at least four
            self.churn()
            self.casbackup("create", self.new_name(), check=True)

    def many_parts(self, parts: int) -> None:
        """Table `many`: about ``parts`` parts of 20 rows, ten per daily partition, never merged.

        The merge limit is in the table's definition, so the tables restores
        make from it do not merge theirs away either.
        """
        days = max(1, parts // 10)
        queries = [
            f"CREATE TABLE {DB}.many (d Date, x UInt64) ENGINE = MergeTree "
            "PARTITION BY toYYYYMMDD(d) ORDER BY x "
            "SETTINGS max_bytes_to_merge_at_max_space_in_pool = 1",
            f"SYSTEM STOP MERGES {DB}.many",
        ]
        for batch in range(10):
            for first in range(0, days, 100):  # at most 100 partitions per INSERT (26.x)
                count = min(100, days - first)
                queries.append(
                    f"INSERT INTO {DB}.many SELECT toDate('2023-01-01') + {first} + number % "
                    f"{count}, number + {batch * 1_000_000} FROM numbers({20 * count})"
                )
        self.target.sql(queries)

    def new_name(self) -> str:
        self.counter += 1
        return f"b{self.counter:04d}"

    def source_tables(self) -> list[str]:
        return ["events_wide", "events_compact"] if self.target.modern else ["events"]

    def churn(self) -> None:
        """New parts, a mutation, sometimes a merge: a create has new data to store."""
        table = self.rng.choice(self.source_tables())
        start = self.rng.randrange(0, 30_000)
        queries = [
            f"INSERT INTO {DB}.{table} SELECT * FROM {DB}.{table} WHERE id >= {start} AND id < {start + 3000}",
            f"ALTER TABLE {DB}.{table} UPDATE s = concat(s, 'u') WHERE id % 101 = {self.rng.randrange(101)}",
            f"INSERT INTO {DB}.agg SELECT toDate('2024-01-01') + number % 30, number FROM numbers({self.rng.randrange(50, 500)})",
        ]
        if self.rng.random() < 0.3:
            queries.append(f"OPTIMIZE TABLE {DB}.{table} FINAL")
        if self.blob_mb:
            # --blob-mb: a table of incompressible bytes made anew, so each create
            # seals a pack of that size (multipart uploads on S3 from 5 MiB).
            # (rand64's argument keeps the 16 calls apart: equal calls are computed once.)
            words = ", ".join(f"reinterpretAsString(rand64({i}))" for i in range(16))
            queries += [
                f"DROP TABLE IF EXISTS {DB}.blob",
                f"CREATE TABLE {DB}.blob (k UInt64, b String) ENGINE = MergeTree ORDER BY k",
                f"INSERT INTO {DB}.blob SELECT number, concat({words}) "
                f"FROM numbers({self.blob_mb * 1024 * 1024 // 128})",
            ]
        self.target.sql(queries)

    # --- state -------------------------------------------------------------------------------

    def listed(self) -> list[str]:
        out = self.casbackup("list", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"list failed: {out.stderr}")
        document = json.loads(out.stdout)
        rows = document if isinstance(document, list) else document.get("backups", [])
        return [r["name"] for r in rows]

    def partial_markers(self) -> list[Path]:
        return [
            marker
            for top in ("data", "store")
            if (self.target.data_root / top).is_dir()
            for marker in (self.target.data_root / top).glob("**/detached/casbackup_partial_*")
        ]

    def leftovers(self) -> list[str]:
        """What a killed run left that clean should have removed, as messages."""
        found: list[str] = []
        shadow = self.target.data_root / "shadow"
        if shadow.is_dir():
            found += [f"shadow entry {p.name}" for p in shadow.glob("casbackup_*")]
        for top in ("data", "store"):
            base = self.target.data_root / top
            if not base.is_dir():
                continue
            for detached in base.glob("**/detached"):
                for entry in [*detached.glob("casbackup_*"), *detached.glob("attaching_*")]:
                    found.append(f"detached entry {entry.relative_to(self.target.data_root)}")
        metadata = self.target.data_root / "metadata"
        if metadata.is_dir():
            found += [f"scratch database {p.name}" for p in metadata.glob("_casbackup_verify_*")]
        found += [f"lock object {k}" for k in self.store.objects() if k.startswith("locks/")]
        found += [f"store temporary {k}" for k in self.store.open_uploads()]
        for p in self.store.catalog.parent.iterdir():
            if (p.is_file() and p.name.startswith(".catalog")) or p.name.startswith(
                "catalog.sqlite-"
            ):
                found.append(f"catalog directory file {p.name}")
        return found

    def store_debris(self, listed: list[str]) -> list[str]:
        """Objects that no listed backup, the catalog's index or gc's marks account for.

        After `clean --broken` (which indexes a killed run's unrecorded packs and
        condemns them) every pack is in the catalog: gc frees what no backup uses.
        A manifest is a backup, so it must be listed; anything else is unknown.
        """
        # Closed explicitly: an open connection leaves -wal/-shm files beside the
        # catalog, which leftovers() would report.
        with contextlib.closing(sqlite3.connect(self.store.catalog)) as db:
            indexed = {row[0] for row in db.execute("SELECT digest FROM packs")}
        found: list[str] = []
        for key in sorted(self.store.objects()):
            if key == "config" or key.startswith(("locks/", "condemned/")):
                continue  # locks: leftovers(); condemned/: gc's marks
            if key.startswith("manifests/"):
                if key.removeprefix("manifests/") not in listed:
                    found.append(f"manifest of no listed backup: {key}")
            elif key.startswith("packs/"):
                if key.rsplit("/", 1)[-1] not in indexed:
                    found.append(f"pack the catalog does not index: {key}")
            else:
                found.append(f"unknown object in the store: {key}")
        return found

    def config_temporaries(self) -> list[str]:
        if not self.files_target.is_dir():
            return []
        return [str(p) for p in self.files_target.rglob(".casbackup_tmp_*")]

    # --- commands ----------------------------------------------------------------------------

    def plan(self, command: str, names: list[str]) -> tuple[list[str], set[str]] | None:
        """Prepare for ``command``; its arguments and the backups it may remove (None: skip)."""
        if command == "create":
            self.churn()
            return ["create", self.new_name()], set()
        if command == "create_rbac":
            self.churn()
            name = self.new_name()
            self.rbac_backups.add(name)
            return ["create", name, "--rbac", "--access-path", str(self.access)], set()
        if command == "run":
            self.churn()
            time.sleep(1.05)  # the nightly name is the UTC second
            return ["run"], set()
        if command == "restore_rbac":
            names = [n for n in names if n in self.rbac_backups]
        if not names:
            return None
        name = self.rng.choice(names)
        if command == "restore_as":
            self.target.sql([f"DROP DATABASE IF EXISTS {COPY}"])
            return ["restore", name, "--tables", f"{DB}.*", "--as", f"{DB}:{COPY}"], set()
        if command == "restore_drop":
            return ["restore", name, "--tables", f"{DB}.*", "--drop-existing"], set()
        if command == "restore_partitions":
            # The source tables are partitioned by month (2024-01..03): one or two
            # of them, in place (just those partitions dropped) or into a new database.
            months = self.rng.sample(["202401", "202402", "202403"], self.rng.choice([1, 2]))
            args = ["restore", name, "--tables", f"{DB}.events*", "--partitions", ",".join(months)]
            if self.rng.random() < 0.5:
                return [*args, "--drop-existing"], set()
            self.target.sql([f"DROP DATABASE IF EXISTS {COPY}"])
            return [*args, "--as", f"{DB}:{COPY}"], set()
        if command == "restore_rbac":
            return [
                "restore",
                name,
                "--no-tables",
                "--rbac",
                "--files-target",
                str(self.files_target),
                "--overwrite",
            ], set()
        if command == "restore_configs":
            return [
                "restore",
                name,
                "--no-tables",
                "--configs",
                "--files-target",
                str(self.files_target),
                "--overwrite",
            ], set()
        if command == "delete":
            if len(names) < 4:
                return None
            victim = names[0]  # the oldest
            return ["delete", victim], {victim}
        if command == "gc":
            return ["gc"], set()
        if command == "verify_restore":
            return ["verify", name, "--restore", "--tables", f"{DB}.*"], set()
        if command == "catalog_rebuild":
            return ["catalog", "rebuild"], set()
        raise ValueError(command)

    def again(self, command: str, args: list[str], names_after: list[str]) -> tuple[Outcome, str]:
        """The same command unkilled; how it was run again."""
        if command in ("create", "create_rbac"):
            name = args[1]
            if name in names_after:  # committed before the kill: a new name for the same job
                args = [args[0], self.new_name(), *args[2:]]
                if command == "create_rbac":
                    self.rbac_backups.add(args[1])
            return self.casbackup(*args), " ".join(args)
        if command == "run":
            time.sleep(1.05)
        if command == "delete" and args[1] not in names_after:
            return Outcome(0, "", "", 0.0), "(deleted before the kill)"
        out = self.casbackup(*args)
        if (
            command.startswith("restore")
            and out.returncode == 14
            and "--drop-existing" in out.stderr
        ):
            out = self.casbackup(*args, "--drop-existing")
            return out, " ".join(args) + " --drop-existing"
        return out, " ".join(args)

    def measure(self, command: str) -> float:
        names = self.listed()
        planned = self.plan(command, names)
        if planned is None:
            return 0.0
        out, self.startups[command] = self.timed(planned[0])
        if out.returncode not in (0, 1):
            raise RuntimeError(f"unkilled {planned[0]} failed: exit {out.returncode}: {out.stderr}")
        if command == "delete":
            self.casbackup("create", self.new_name(), check=True)  # keep the count up
        return out.seconds

    # --- one round ---------------------------------------------------------------------------

    def round(self, command: str) -> dict[str, Any] | None:
        names = self.listed()
        planned = self.plan(command, names)
        if planned is None:
            return None
        args, may_vanish = planned
        duration = self.durations[command]
        at, phase = self.kill_moment(command)
        outcome = self.killed_at(args, at, phase)
        violations: list[str] = []
        if not outcome.killed and outcome.returncode not in (0, 1):
            violations.append(
                f"unkilled run failed: exit {outcome.returncode}: {outcome.stderr[-500:]}"
            )
        time.sleep(1.1)  # store temporaries older than --margin 1s
        markers = self.partial_markers()
        clean = self.casbackup("clean", "--json")
        broken = self.casbackup("clean", "--broken", "--margin", "1s", "--json")
        reported: dict[str, Any] = {}
        for name, out in (("clean", clean), ("clean --broken", broken)):
            if out.returncode not in (0, 1):
                violations.append(f"{name} failed: exit {out.returncode}: {out.stderr[-500:]}")
                continue
            try:
                reported[name] = json.loads(out.stdout)
            except json.JSONDecodeError:
                violations.append(f"{name} --json printed no JSON: {out.stdout[-300:]}")
        report = reported.get("clean", {})
        for marker in markers:  # each reported: a part-restored table, or debris
            if not marker.parent.parent.exists():
                continue  # a verify scratch table, dropped with its database by clean
            if not report.get("partial_restores") and str(marker) not in report.get(
                "temp_parts", []
            ):
                violations.append(f"partial marker {marker} not reported by clean")
        if clean.returncode == 1 and "warning" not in clean.stderr:
            violations.append(f"clean exit 1 without a warning: {clean.stderr[-300:]}")
        violations += self.leftovers()
        after = self.listed()
        violations += self.store_debris(after)
        lost = set(names) - may_vanish - set(after)
        if lost:
            violations.append(f"committed backups lost: {sorted(lost)}")
        checked = self.casbackup("verify", "--read-data")
        if checked.returncode != 0:
            violations.append(
                f"verify --read-data: exit {checked.returncode}: {checked.stderr[-800:]}"
            )
        self.rounds += 1
        if after and self.rounds % self.verify_restore_every == 0:
            victim = self.rng.choice([n for n in after if n in names] or after)
            drill = self.casbackup("verify", victim, "--restore", "--tables", f"{DB}.*")
            if drill.returncode != 0:
                violations.append(
                    f"verify {victim} --restore: exit {drill.returncode}: {drill.stderr[-800:]}"
                )
        rerun, how = self.again(command, args, after)
        if rerun.returncode not in (0, 1):
            violations.append(f"run again ({how}): exit {rerun.returncode}: {rerun.stderr[-800:]}")
        violations += [f"after the rerun: {v}" for v in self.leftovers()]
        violations += [f"config temporary after the rerun: {p}" for p in self.config_temporaries()]
        if command == "delete":
            self.casbackup("create", self.new_name())  # keep the count up
        return {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "engine": self.target.name,
            "command": command,
            "args": args,
            "duration": round(duration, 3),
            "kill_at": round(at, 3),
            "startup": round(self.startups[command], 3),
            "phase": phase,
            "trigger": outcome.trigger,
            "store": self.store.name,
            "killed": outcome.killed,
            "returncode": outcome.returncode,
            "clean": clean.returncode,
            "clean_report": reported.get("clean"),
            "broken_report": reported.get("clean --broken"),
            "rerun": how,
            "rerun_rc": rerun.returncode,
            "violations": violations,
            "stderr": outcome.stderr[-500:],
        }


COMMANDS = [
    "create",
    "create_rbac",
    "restore_as",
    "restore_drop",
    "restore_partitions",
    "restore_configs",
    "restore_rbac",
    "delete",
    "gc",
    "run",
    "verify_restore",
    "catalog_rebuild",
]
# 18.16 has no SQL access control: `--rbac` there only warns (tests/cli/test_server_state.py).
CHDB_ONLY = {"create_rbac", "restore_rbac"}
# The commands that attach parts: --timing attach kills them in the ATTACH window.
ATTACHING = {"restore_as", "restore_drop", "restore_partitions", "verify_restore"}


def past(deadline: str | None) -> bool:
    if deadline is None:
        return False
    hours, minutes = (int(v) for v in deadline.split(":"))
    now = dt.datetime.now(dt.UTC)
    return (now.hour, now.minute) >= (hours, minutes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["server", "chdb"], required=True)
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--only", action="append", choices=COMMANDS)
    parser.add_argument("--verify-restore-every", type=int, default=8)
    parser.add_argument("--timing", choices=["work", "uniform", "attach"], default="work")
    parser.add_argument(
        "--parts",
        type=int,
        default=0,
        help="also a table of about this many small parts (merges stopped), for --timing attach",
    )
    parser.add_argument(
        "--blob-mb",
        type=int,
        help="MiB of incompressible data made anew before each create (default: 6 on S3, else 0)",
    )
    parser.add_argument("--deadline", help="HH:MM UTC: stop starting rounds from then on")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally below stops the server

    work = args.out / (args.engine if args.store == "local" else f"{args.engine}-{args.store}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    commands = [c for c in args.only or COMMANDS if args.engine == "chdb" or c not in CHDB_ONLY]
    blob_mb = args.blob_mb if args.blob_mb is not None else (6 if args.store == "s3" else 0)
    store: LocalRepo | S3Repo = LocalRepo(work) if args.store == "local" else S3Repo(work)
    target: Target | None = None
    counts: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    broken: dict[str, int] = defaultdict(int)
    try:
        target = (
            ServerTarget(work / "server") if args.engine == "server" else ChdbTarget(work / "chdb")
        )
        campaign = Campaign(
            target,
            store,
            work,
            random.Random(args.seed),
            args.verify_restore_every,
            timing=args.timing,
            blob_mb=blob_mb,
            parts=args.parts,
        )
        campaign.setup(args.rows)
        for command in list(commands):
            campaign.durations[command] = campaign.measure(command)
            if not campaign.durations[command]:
                print(f"measured {command}: nothing to run it on; left out", flush=True)
                commands.remove(command)
                continue
            print(
                f"measured {command}: {campaign.durations[command]:.2f} s "
                f"(first log line at {campaign.startups[command]:.2f} s)",
                flush=True,
            )
        with open(work / "rounds.jsonl", "a") as log:
            while sum(counts.values()) < args.kills and not past(args.deadline):
                command = campaign.rng.choice(commands)
                result = campaign.round(command)
                if result is None:
                    continue
                counts[command] += 1
                kills[command] += result["killed"]
                log.write(json.dumps(result) + "\n")
                log.flush()
                tag = "KILLED" if result["killed"] else "ended"
                print(
                    f"{sum(counts.values()):4d} {command:18s} at {result['kill_at']:.2f}/"
                    f"{result['duration']:.2f} s ({result['phase']}{' ' + result['trigger'] if result['trigger'] else ''}) "
                    f"{tag} clean={result['clean']}",
                    flush=True,
                )
                if result["violations"]:
                    broken[command] += 1
                    for violation in result["violations"]:
                        print(f"     VIOLATION: {violation}", flush=True)
    finally:
        if target is not None:
            target.stop()
        store.stop()
        print(f"\n{args.engine} / {args.store}: rounds per command (killed, with violations):")
        for command in commands:
            print(f"  {command:18s} {counts[command]:4d} ({kills[command]}, {broken[command]})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
