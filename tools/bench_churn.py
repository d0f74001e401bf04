#!/usr/bin/env python3
"""ClickHouse churn benchmark: a scripted week of nightly backups, casbackup against its peers.

    .venv/bin/python tools/bench_churn.py [--engine server|chdb|both] [--rows N]
        [--workdir DIR] [--keep] [--json-out PATH] [--quiet-seconds S]
        [--other-fingerprints] [--step-times FILE]

Method. One run, one data set per engine; every tool backs up the same data
on the same night, one after the other, nothing running in between:

- Engines: the Debian ClickHouse 18.16 server (our own instance on loopback
  ports, data under the workdir) and chdb (ClickHouse 26.x in-process). chdb
  locks its data directory to one process, so every step that touches it (SQL,
  casbackup, BACKUP) is a short subprocess of its own, strictly in sequence.
- Day 0: `bench.events` (ts, user_id, event, url, referrer, amount, country,
  session_id, duration_ms), 6 monthly partitions, ORDER BY (user_id, ts),
  loaded with --rows rows in 6 INSERTs; deterministic (hashes of the row
  number). Then the table settles: no merge or mutation running and the set of
  active parts unchanged for --quiet-seconds (on chdb inside a process that
  holds the engine open, since merges only run while one does). Partitions
  still in several parts are then merged with OPTIMIZE (not FINAL): the merge
  selector passes over some parts at first and merges them once they have
  aged, which would otherwise land on a random night (night 1, say).
- Nights: 0 full backup; 1 nothing changed; 2 +5% rows into the last month
  (5 INSERTs, background merges allowed to run); 3 ALTER UPDATE of one column
  in one month; 4 ALTER DELETE of one user (rewrites every part); 5 DROP
  PARTITION of the oldest month; 6 OPTIMIZE ... PARTITION ... FINAL of one
  month; chdb also 7, a lightweight DELETE of one user. Night 2 ends with
  OPTIMIZE (not FINAL) of that month: the merge the server would otherwise do
  on some later night, blurring which churn cost what. Each churn is followed
  by the same settling, then, in this order:
  1. `casbackup create nightN` (CLI subprocess under /usr/bin/time: wall time
     and peak RSS; its --json gives bytes read and packed bytes stored; the
     repository directory's growth is measured too, catalog included);
  2. the part-name diff, i.e. what clickhouse-backup --diff-from-remote would
     upload: the bytes of every part of nightN whose name is not in night N-1,
     computed from `casbackup show --json` of both backups;
  3. restic: `ALTER TABLE bench.events FREEZE WITH NAME 'restic_nightN'`,
     `restic backup` of that table's shadow directory (repository format 2,
     compression auto; growth of its repository directory, wall time, peak
     RSS), then the shadow is removed. Its part names are compared with
     casbackup's manifest, so a merge sneaking in between would show;
  4. chdb only: `BACKUP TABLE bench.events TO File('.../nightN') SETTINGS
     base_backup = File('.../nightN-1')` (size of that backup's files, wall
     time of the process).
- After the last night: `casbackup restore` of it with --as into
  bench_restoredN (row count and a column sum checked against the source) and
  `restic restore latest --target DIR`, in two rounds in the mirrored order
  casbackup, restic, restic, casbackup (a restore's speed here depends on how
  long ago the memory it writes into was last used; this gives both tools the
  same share); the goal compares the totals of both rounds. Before each
  restore the tool's repository (restic's cache included) is dropped from the
  page cache, so both read it from disk, as a restore days after the backup
  would.

Every wall time is that of a whole process (start-up included), as an
operator's cron job would see it. Data is read from the page cache (24 GB of
RAM, the table was just written); `sync` runs before every timed step.

Caveats, by design of the peers: restic sees a new path every night (the
freeze name changes) and FREEZE's hard links change every file's ctime, so it
re-reads every file each night; what it stores is deduplicated by content
regardless. restic picks its chunker polynomial at random per repository,
so its byte counts on rewrite nights (ALTER DELETE) vary by a few percent of
the logical size from run to run, most at small --rows (files of a few MB are
only a few chunks long). The part-name diff counts part bytes as they are on
disk; the tools that upload by part name would upload that, before their own
compression. casbackup's restore also creates the table and attaches and
checks the parts; restic's only writes files.

Goals (PASS/FAIL per engine; "stored" = repository directory growth, the same
measure for casbackup and restic, metadata included; against the part-name
diff, which counts data only, casbackup's packed data bytes are used):
  - every night: casbackup stored <= restic stored + 2% of the logical size;
  - every night: casbackup packed bytes <= part-name diff;
  - unchanged night: casbackup read < 1% and stored < 1% of the logical size,
    and its wall time < 10% of the full backup's;
  - full backup throughput (logical bytes / wall time) >= 3x restic's;
  - restore of the last night >= 2x faster than restic's restore.

The machine is small and shared: absolute times vary by +-30% between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from clickhouse_server import SERVER_BINARY, free_port, launch_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHDB_SQL = ROOT / "tools" / "chdb_sql.py"
RESTIC = shutil.which("restic") or "/usr/bin/restic"
STEP_TIMES = ROOT / "tools" / "step_times.py"
GNU_TIME = "/usr/bin/time"
MARKER = ".bench-churn-workdir"
MB = 1_000_000

DATABASE = "bench"
TABLE = f"{DATABASE}.events"
FIRST_DAY = "2026-01-01 00:00:00"
DAYS = 181  # January to June 2026: six monthly partitions
LAST_MONTH_START, LAST_MONTH_DAYS = "2026-06-01 00:00:00", 30
LOAD_INSERTS = 6
DEFAULT_ROWS = 40_000_000  # >= 1 GB on disk on both: 1,445 MB on 18.16, 1,073 MB on chdb (26.x)

CREATE_TABLE = f"""CREATE TABLE {TABLE} (
    ts DateTime, user_id UInt32, event String, url String, referrer String,
    amount Decimal(12, 2), country FixedString(2), session_id UInt64, duration_ms UInt32
) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (user_id, ts)"""

# Deterministic rows: every value is a hash of the row number. Written to run
# on 18.16 as well as 26.x (no LowCardinality, no newer functions).
INSERT_ROWS = f"""INSERT INTO {TABLE}
SELECT
    toDateTime('{{start}}') + cityHash64(number, 1) % {{span}} AS ts,
    toUInt32(cityHash64(number, 2) % 200000) AS user_id,
    ['view', 'view', 'view', 'click', 'click', 'cart', 'search', 'buy'][cityHash64(number, 3) % 8 + 1] AS event,
    concat('https://shop.example/', ['p', 'c', 's', 'cart'][cityHash64(number, 4) % 4 + 1], '/',
           toString(cityHash64(number, 5) % 500000)) AS url,
    ['', '', concat('https://www.google.com/search?q=', toString(cityHash64(number, 6) % 100000)),
     concat('https://news.example/a/', toString(cityHash64(number, 6) % 20000))][cityHash64(number, 7) % 4 + 1] AS referrer,
    toDecimal64((cityHash64(number, 8) % 1000000) / 100, 2) AS amount,
    toFixedString(['US', 'DE', 'FR', 'GB', 'JP', 'BR', 'IN', 'CA'][cityHash64(number, 9) % 8 + 1], 2) AS country,
    cityHash64(number, 10) AS session_id,
    toUInt32(cityHash64(number, 11) % 60000) AS duration_ms
FROM numbers({{offset}}, {{count}})"""

SETTLE_STATE = (
    "SELECT "
    f"(SELECT count() FROM system.merges WHERE database = '{DATABASE}'), "
    f"(SELECT count() FROM system.mutations WHERE database = '{DATABASE}' AND NOT is_done), "
    f"(SELECT count() FROM system.parts WHERE database = '{DATABASE}' AND active), "
    f"(SELECT sum(cityHash64(name)) FROM system.parts WHERE database = '{DATABASE}' AND active)"
)

USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile><quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
"""


# --------------------------------------------------------------------------- processes


@dataclass
class Run:
    """One finished subprocess: wall time, peak RSS, output."""

    wall_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str
    returncode: int


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
) -> Run:
    """Run cmd under GNU time (peak RSS), after a sync, and time it."""
    with tempfile.NamedTemporaryFile(prefix="bench-churn-rss-", suffix=".txt") as rss:
        os.sync()
        started = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - started
        lines = Path(rss.name).read_text().split()
    if proc.returncode not in ok:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}{proc.stdout[-1000:]}"
        )
    rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Run(wall, rss_kb * 1024, proc.stdout, proc.stderr, proc.returncode)


def evict(*trees: Path) -> None:
    """Drop these directories' files from the page cache, as days would.

    A restore reads a repository written long before: from disk, not from
    memory. casbackup writes its packs past the page cache (O_DIRECT) while
    restic's stay cached after its backup; evicting both before each restore
    makes them start alike. After a sync the pages are clean, so the kernel
    drops them at once.
    """
    os.sync()
    for tree in trees:
        for path in tree.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def run_plain(cmd: list[str], *, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def tree_bytes(path: Path) -> int:
    """Sum of the sizes of all regular files under path (du --apparent-size, no double counting)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
    return total


def wait_quiet(state: Callable[[], list[int]], quiet_s: float, timeout_s: float = 3600) -> float:
    """Wait until no merge or mutation runs and the active parts stay the same for quiet_s."""
    started = time.monotonic()
    last: tuple[int, int] | None = None
    since = started
    while True:
        merges, mutations, parts, names_hash = state()
        now = time.monotonic()
        if merges or mutations or (parts, names_hash) != last:
            last, since = (parts, names_hash), now
        elif now - since >= quiet_s:
            return now - started
        if now - started > timeout_s:
            raise RuntimeError(f"{TABLE} did not settle within {timeout_s:.0f} s")
        time.sleep(0.5)


# --------------------------------------------------------------------------- engines


class Engine(Protocol):
    name: str
    root: Path

    @property
    def url(self) -> str: ...

    @property
    def data_root(self) -> Path: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def execute(self, sql: str) -> None: ...

    def rows(self, sql: str) -> list[list[str]]: ...

    def mutate(self, sql: str) -> None: ...

    def settle(self, quiet_s: float) -> float: ...

    def version(self) -> str: ...


@dataclass
class ServerEngine:
    """Our own ClickHouse 18.16 server process, like tests/engines.py starts it."""

    root: Path
    name: str = "server"
    tcp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _client: Any = None

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self.process = launch_server(
            self.root,
            tcp_port=self.tcp_port,
            http_port=self.http_port,
            users_xml=USERS_XML,
            ready=self._answers,
        )

    def _answers(self) -> None:
        try:
            self.rows("SELECT 1")
        except Exception:
            self._client = None  # a connection refused while starting is not reused
            raise

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None
        stop_server(self.process)

    def _execute(self, sql: str) -> list[tuple[Any, ...]]:
        if self._client is None:
            from clickhouse_driver import Client

            self._client = Client("127.0.0.1", port=self.tcp_port, send_receive_timeout=7200)
        # Never INSERT ... VALUES here: clickhouse-driver would wait for data params.
        return list(self._client.execute(sql))

    def execute(self, sql: str) -> None:
        self._execute(sql)

    def rows(self, sql: str) -> list[list[str]]:
        return [[str(v) for v in row] for row in self._execute(sql)]

    def mutate(self, sql: str) -> None:
        self.execute(sql)  # 18.16 has no mutations_sync; settle() polls system.mutations

    def settle(self, quiet_s: float) -> float:
        return wait_quiet(lambda: [int(v) for v in self.rows(SETTLE_STATE)[0]], quiet_s)

    def version(self) -> str:
        return self.rows("SELECT version()")[0][0]


@dataclass
class ChdbEngine:
    """chdb on a data directory; every statement in a short process of its own."""

    root: Path
    name: str = "chdb"

    @property
    def url(self) -> str:
        return f"chdb://{self.data_root}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def backup_dir(self) -> Path:
        return self.root / "native-backups"

    @property
    def config_file(self) -> Path:
        return self.root / "chdb-backups.xml"

    def start(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f"<clickhouse><backups><allowed_path>{self.backup_dir}/</allowed_path></backups></clickhouse>\n"
        )

    def stop(self) -> None:
        pass

    def command(self, sql: str, *, with_config: bool = False) -> list[str]:
        cmd = [PYTHON, str(CHDB_SQL), str(self.data_root), sql]
        return [*cmd, "--config-file", str(self.config_file)] if with_config else cmd

    def execute(self, sql: str) -> None:
        run_plain(self.command(sql))

    def rows(self, sql: str) -> list[list[str]]:
        out = run_plain(self.command(sql))
        return [line.split("\t") for line in out.splitlines() if line]

    def mutate(self, sql: str) -> None:
        self.execute(f"{sql} SETTINGS mutations_sync = 2")

    def settle(self, quiet_s: float) -> float:
        out = run_plain([PYTHON, __file__, "--child-settle", str(self.data_root), str(quiet_s)])
        return float(out.strip().splitlines()[-1])

    def version(self) -> str:
        return self.rows("SELECT version()")[0][0]


def child_settle(data_dir: str, quiet_s: str) -> None:
    """Hold the chdb engine open (its background merges run) until the table is quiet."""
    import json as json_

    from chdb import session

    s = session.Session(data_dir)
    try:

        def state() -> list[int]:
            text = s.query(SETTLE_STATE, "JSONCompact").bytes().decode()
            return [int(v) for v in json_.loads(text)["data"][0]]

        print(wait_quiet(state, float(quiet_s)))
    finally:
        s.close()


# --------------------------------------------------------------------------- nights


@dataclass
class Night:
    number: int
    label: str
    churn: Callable[[Engine, int], None]
    chdb_only: bool = False


def load_rows(engine: Engine, offset: int, count: int, start: str, span_s: int) -> None:
    engine.execute(INSERT_ROWS.format(offset=offset, count=count, start=start, span=span_s))


def churn_nothing(engine: Engine, rows: int) -> None:
    pass


def churn_insert(engine: Engine, rows: int) -> None:
    batch = max(1, rows // 100)  # 5 batches of 1%, like a day of hourly loads
    for i in range(5):
        load_rows(engine, rows + i * batch, batch, LAST_MONTH_START, LAST_MONTH_DAYS * 86400)
    # The merge ClickHouse would do in the background sooner or later, done
    # now so that it lands on this night and not on whichever night it happens
    # to (observed on both engines: small parts beside a big one wait a while).
    engine.execute(f"OPTIMIZE TABLE {TABLE} PARTITION 202606")


def churn_update(engine: Engine, rows: int) -> None:
    engine.mutate(
        f"ALTER TABLE {TABLE} UPDATE duration_ms = toUInt32(duration_ms + 1) WHERE toYYYYMM(ts) = 202603"
    )


def churn_delete_user(engine: Engine, rows: int) -> None:
    # A user in the middle of the sort key: every part is rewritten from that
    # user's rows on, so about half of each part is new bytes (the average case).
    engine.mutate(f"ALTER TABLE {TABLE} DELETE WHERE user_id = 104242")


def churn_drop_partition(engine: Engine, rows: int) -> None:
    engine.execute(f"ALTER TABLE {TABLE} DROP PARTITION 202601")


def churn_optimize_final(engine: Engine, rows: int) -> None:
    engine.execute(f"OPTIMIZE TABLE {TABLE} PARTITION 202602 FINAL")


def churn_lightweight_delete(engine: Engine, rows: int) -> None:
    engine.execute(f"DELETE FROM {TABLE} WHERE user_id = 4343")


NIGHTS = [
    Night(0, "full backup (day 0)", churn_nothing),
    Night(1, "nothing changed", churn_nothing),
    Night(2, "INSERT +5% rows, merge (last month)", churn_insert),
    Night(3, "ALTER UPDATE 1 column, 1 month", churn_update),
    Night(4, "ALTER DELETE 1 user", churn_delete_user),
    Night(5, "DROP PARTITION (oldest month)", churn_drop_partition),
    Night(6, "OPTIMIZE PARTITION FINAL (1 month)", churn_optimize_final),
    Night(7, "lightweight DELETE 1 user", churn_lightweight_delete, chdb_only=True),
]


# --------------------------------------------------------------------------- the bench


@dataclass
class NightResult:
    night: int
    label: str
    settle_s: float
    logical_bytes: int
    parts: int
    rows: int
    cas_read_bytes: int
    cas_new_bytes: int
    cas_new_raw_bytes: int
    cas_new_chunks: int
    cas_repo_growth: int
    cas_wall_s: float
    cas_internal_s: float
    cas_peak_rss: int
    cas_warnings: list[str]
    part_diff_bytes: int
    part_diff_parts: int
    restic_repo_growth: int
    restic_data_added: int
    restic_frozen_bytes: int
    restic_same_parts: bool
    restic_wall_s: float
    restic_peak_rss: int
    native_bytes: int | None = None
    native_wall_s: float | None = None
    native_peak_rss: int | None = None
    cas_other_wall_s: float | None = None  # --other-fingerprints: same night, second repository


class Bench:
    """One engine's week: setup, day-0 load, nights, restores."""

    def __init__(
        self,
        engine: Engine,
        rows: int,
        quiet_s: float,
        other_fingerprints: bool = False,
        step_times: Path | None = None,
    ) -> None:
        self.engine = engine
        self.rows = rows
        self.quiet_s = quiet_s
        self.other_fingerprints = other_fingerprints
        self.step_times = step_times  # if set: casbackup runs through tools/step_times.py
        self.root = engine.root
        self.repo = self.root / "casbackup-repo"
        self.other_repo = self.root / "casbackup-repo-other"
        self.other_config = self.root / "casbackup-other.toml"
        self.restic_repo = self.root / "restic-repo"
        self.restic_cache = self.root / "restic-cache"
        self.cas_config = self.root / "casbackup.toml"
        self.previous_parts: dict[str, int] = {}

    # -- tools

    def casbackup(self, *args: str, ok: tuple[int, ...] = (0,), other: bool = False) -> Run:
        repo, config = (
            (self.other_repo, self.other_config) if other else (self.repo, self.cas_config)
        )
        env = {**os.environ, "CASBACKUP_CONFIG": str(config)}
        start = [PYTHON, str(STEP_TIMES)] if self.step_times else [PYTHON, "-m", "casbackup"]
        cmd = [*start, "--repo", str(repo), "--clickhouse", self.engine.url]
        run = run_measured([*cmd, *args], env=env, ok=ok)
        if self.step_times:
            with open(self.step_times, "a") as log:
                log.write(
                    f"== {self.engine.name}: casbackup {shlex.join(args)} ({run.wall_s:.3f} s)\n"
                )
                log.writelines(
                    f"{line}\n" for line in run.stderr.splitlines() if line.startswith("step ")
                )
        return run

    def restic(self, *args: str) -> Run:
        env = {**os.environ, "RESTIC_PASSWORD": "bench-churn", "RESTIC_PROGRESS_FPS": "0.1"}
        cmd = [RESTIC, "--repo", str(self.restic_repo), "--cache-dir", str(self.restic_cache)]
        return run_measured([*cmd, *args], env=env)

    def setup(self) -> float:
        """Create both repositories; return casbackup's start-up time (`list` on an empty repo)."""
        self.cas_config.write_text("")  # all defaults; --repo/--clickhouse say where
        self.casbackup("init")
        if self.other_fingerprints:
            self.other_config.write_text("[backup]\nfingerprints = true\n")
            self.casbackup("init", other=True)
        self.restic("init", "--repository-version", "2")
        return self.casbackup("list", "--json").wall_s

    # -- data

    def load(self) -> dict[str, Any]:
        e = self.engine
        e.execute(f"CREATE DATABASE {DATABASE}")
        e.execute(CREATE_TABLE)
        per_insert = self.rows // LOAD_INSERTS
        started = time.perf_counter()
        for i in range(LOAD_INSERTS):
            count = per_insert if i < LOAD_INSERTS - 1 else self.rows - per_insert * i
            load_rows(e, i * per_insert, count, FIRST_DAY, DAYS * 86400)
        loaded_s = time.perf_counter() - started
        settle_s = e.settle(self.quiet_s)
        settled = self.table_state()["parts_per_partition"]
        started = time.perf_counter()
        self.consolidate()
        return {
            "load_s": loaded_s,
            "settle_s": settle_s,
            "parts_per_partition_settled": settled,
            "consolidate_s": time.perf_counter() - started,
            **self.table_state(),
        }

    def consolidate(self, rounds: int = 10) -> None:
        """Merge each partition down to one part, as the server does on its own in time.

        Background merges of parts that the selector first passes over start
        later, when the parts have aged: they would land on a random night (on
        night 1, the "unchanged" night would not be). OPTIMIZE without FINAL
        does those merges now, so that day 0 is a table at rest.
        """
        for _ in range(rounds):
            crowded = [p for p, n in self.table_state()["parts_per_partition"].items() if n > 1]
            if not crowded:
                break
            for partition in crowded:
                self.engine.execute(f"OPTIMIZE TABLE {TABLE} PARTITION {partition}")
            self.engine.settle(self.quiet_s)

    def table_state(self) -> dict[str, Any]:
        where = f"database = '{DATABASE}' AND table = 'events' AND active"
        parts = self.engine.rows(
            f"SELECT partition, count(), sum(rows), sum(bytes_on_disk) FROM system.parts WHERE {where} "
            "GROUP BY partition ORDER BY partition"
        )
        return {
            "rows": sum(int(p[2]) for p in parts),
            "bytes_on_disk": sum(int(p[3]) for p in parts),
            "parts_per_partition": {p[0]: int(p[1]) for p in parts},
        }

    def count_and_sum(self, table: str) -> tuple[int, int]:
        row = self.engine.rows(f"SELECT count(), sum(toUInt64(duration_ms)) FROM {table}")[0]
        return int(row[0]), int(row[1])

    # -- one night

    def night(self, night: Night) -> NightResult:
        night.churn(self.engine, self.rows)
        settle_s = self.engine.settle(self.quiet_s)
        name = f"night{night.number}"
        cas, created, growth = self.cas_backup(name)
        parts = self.manifest_parts(name)
        diff = {p: b for p, b in parts.items() if p not in self.previous_parts}
        self.previous_parts = parts
        restic = self.restic_backup(name, set(parts))
        result = NightResult(
            night=night.number,
            label=night.label,
            settle_s=settle_s,
            logical_bytes=created["logical_bytes"],
            parts=len(parts),
            rows=sum(t["rows"] for t in created["tables"]),
            cas_read_bytes=created["read_bytes"],
            cas_new_bytes=created["new_bytes"],
            cas_new_raw_bytes=created["new_raw_bytes"],
            cas_new_chunks=created["new_chunks"],
            cas_repo_growth=growth,
            cas_wall_s=cas.wall_s,
            cas_internal_s=created["duration_s"],
            cas_peak_rss=cas.peak_rss_bytes,
            cas_warnings=created["warnings"],
            part_diff_bytes=sum(diff.values()),
            part_diff_parts=len(diff),
            **restic,
        )
        if isinstance(self.engine, ChdbEngine):
            result.native_bytes, result.native_wall_s, result.native_peak_rss = self.native_backup(
                self.engine, night.number
            )
        if self.other_fingerprints:
            run = self.casbackup("create", name, "--tables", f"{DATABASE}.*", ok=(0, 1), other=True)
            result.cas_other_wall_s = run.wall_s
        return result

    def cas_backup(self, name: str) -> tuple[Run, dict[str, Any], int]:
        before = tree_bytes(self.repo)
        run = self.casbackup("create", name, "--tables", f"{DATABASE}.*", "--json", ok=(0, 1))
        return run, json.loads(run.stdout), tree_bytes(self.repo) - before

    def manifest_parts(self, name: str) -> dict[str, int]:
        shown = json.loads(self.casbackup("show", name, "--json").stdout)
        return {
            p["name"]: p["bytes"]
            for t in shown["tables"]
            if (t["database"], t["name"]) == (DATABASE, "events")
            for p in t["parts"]
        }

    def restic_backup(self, name: str, cas_parts: set[str]) -> dict[str, Any]:
        freeze = f"restic_{name}"
        self.engine.execute(f"ALTER TABLE {TABLE} FREEZE WITH NAME '{freeze}'")
        shadow = self.engine.data_root / "shadow" / freeze
        try:
            table_dir = frozen_table_dir(shadow)
            frozen_parts = {p.name for p in table_dir.iterdir() if p.is_dir()}
            before = tree_bytes(self.restic_repo)
            run = self.restic("backup", "--json", "--host", "bench", "--tag", name, str(table_dir))
            growth = tree_bytes(self.restic_repo) - before
            summary = restic_summary(run.stdout)
            return {
                "restic_repo_growth": growth,
                "restic_data_added": int(summary.get("data_added", 0)),
                "restic_frozen_bytes": tree_bytes(table_dir),
                "restic_same_parts": frozen_parts == cas_parts,
                "restic_wall_s": run.wall_s,
                "restic_peak_rss": run.peak_rss_bytes,
            }
        finally:
            shutil.rmtree(shadow, ignore_errors=True)  # 18.16 has no UNFREEZE

    def native_backup(self, engine: ChdbEngine, number: int) -> tuple[int, float, int]:
        target = engine.backup_dir / f"night{number}"
        sql = f"BACKUP TABLE {TABLE} TO File('{target}')"
        if number > 0:
            sql += f" SETTINGS base_backup = File('{engine.backup_dir / f'night{number - 1}'}')"
        run = run_measured(engine.command(sql, with_config=True))
        return tree_bytes(target), run.wall_s, run.peak_rss_bytes

    # -- restores

    def restores(self, last: str) -> dict[str, Any]:
        """Two rounds, in the order casbackup, restic, restic, casbackup.

        A restore writes the whole table anew, and on this VM writing into
        memory that has been free a while costs several times what reusing
        recently freed memory costs (the same casbackup restore: sys 1.4 s in
        one run, 4.2-4.5 s in the next six; docs/benchmarks.md). One run each
        measures which tool met which memory as much as the tools; the
        mirrored order gives each tool a first and a second place, and the
        goal compares the totals.
        """
        source = self.count_and_sum(TABLE)
        rounds = [
            self._restore_round(last, 1, ("cas", "restic"), source),
            self._restore_round(last, 2, ("restic", "cas"), source),
        ]
        return {
            "backup": last,
            "source_rows": source[0],
            "rounds": rounds,
            "cas_wall_s": sum(r["cas_wall_s"] for r in rounds),
            "restic_wall_s": sum(r["restic_wall_s"] for r in rounds),
            "restored_rows": rounds[0]["restored_rows"],
            "rows_match": all(r["rows_match"] for r in rounds),
        }

    def _restore_round(
        self, last: str, number: int, order: tuple[str, str], source: tuple[int, int]
    ) -> dict[str, Any]:
        target = self.root / f"restic-restore{number}"
        database = f"bench_restored{number}"
        run_step: dict[str, Callable[[], Run]] = {
            "cas": lambda: self.casbackup(
                "restore",
                last,
                "--tables",
                f"{DATABASE}.*",
                "--as",
                f"{DATABASE}:{database}",
                "--json",
            ),
            "restic": lambda: self.restic("restore", "latest", "--target", str(target)),
        }
        repository = {"cas": (self.repo,), "restic": (self.restic_repo, self.restic_cache)}
        measured = {}
        for step in order:
            evict(*repository[step])
            measured[step] = run_step[step]()
        restored = self.count_and_sum(f"{database}.events")
        return {
            "order": list(order),
            "cas_wall_s": measured["cas"].wall_s,
            "cas_peak_rss": measured["cas"].peak_rss_bytes,
            "restored_rows": restored[0],
            "rows_match": source == restored,
            "restic_wall_s": measured["restic"].wall_s,
            "restic_peak_rss": measured["restic"].peak_rss_bytes,
            "restic_restored_bytes": tree_bytes(target),
        }

    def run(self) -> dict[str, Any]:
        startup_s = self.setup()
        log(f"[{self.engine.name}] loading {self.rows:,} rows")
        day0 = self.load()
        log(
            f"[{self.engine.name}] day 0: {day0['bytes_on_disk'] / MB:.1f} MB on disk, parts per "
            f"partition {day0['parts_per_partition_settled']} after background merges, "
            f"{day0['parts_per_partition']} after OPTIMIZE"
        )
        nights: list[NightResult] = []
        for night in NIGHTS:
            if night.chdb_only and not isinstance(self.engine, ChdbEngine):
                continue
            nights.append(self.night(night))
            n = nights[-1]
            log(
                f"[{self.engine.name}] night {n.night} ({n.label}): casbackup +{human(n.cas_repo_growth)} "
                f"in {n.cas_wall_s:.1f} s, restic +{human(n.restic_repo_growth)} in {n.restic_wall_s:.1f} s"
            )
        log(f"[{self.engine.name}] restoring night{nights[-1].night}")
        restore = self.restores(f"night{nights[-1].night}")
        return {
            "engine": self.engine.name,
            "clickhouse_version": self.engine.version(),
            "rows_requested": self.rows,
            "cas_startup_s": startup_s,
            "day0": day0,
            "nights": [asdict(n) for n in nights],
            "restore": restore,
        }


def frozen_table_dir(shadow: Path) -> Path:
    """The one table directory in a FREEZE shadow: the parent of the part directories.

    18.16: shadow/<name>/data/bench/events/; 26.x: shadow/<name>/store/xxx/<uuid>/.
    """
    tables = {p.parent.parent for p in shadow.rglob("checksums.txt") if ".proj" not in str(p)}
    if len(tables) != 1:
        raise RuntimeError(f"expected one frozen table under {shadow}, found {sorted(tables)}")
    return tables.pop()


def restic_summary(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("message_type") == "summary":
            return doc
    return {}


# --------------------------------------------------------------------------- goals and report


@dataclass
class Verdict:
    goal: str
    passed: bool
    detail: str


def evaluate(result: dict[str, Any]) -> list[Verdict]:
    nights = result["nights"]
    full, unchanged = nights[0], nights[1]
    logical = full["logical_bytes"]
    verdicts: list[Verdict] = []

    over_restic = [
        f"night {n['night']}: {human(n['cas_repo_growth'])} > {human(n['restic_repo_growth'])} "
        f"+ {human(0.02 * n['logical_bytes'])}"
        for n in nights
        if n["cas_repo_growth"] > n["restic_repo_growth"] + 0.02 * n["logical_bytes"]
    ]
    verdicts.append(
        Verdict(
            "every night: casbackup stored <= restic stored + 2% of logical",
            not over_restic,
            "; ".join(over_restic) or "all nights",
        )
    )
    over_diff = [
        f"night {n['night']}: {human(n['cas_new_bytes'])} > {human(n['part_diff_bytes'])}"
        for n in nights
        if n["cas_new_bytes"] > n["part_diff_bytes"]
    ]
    verdicts.append(
        Verdict(
            "every night: casbackup packed bytes <= part-name diff",
            not over_diff,
            "; ".join(over_diff) or "all nights",
        )
    )
    read_pct = 100 * unchanged["cas_read_bytes"] / unchanged["logical_bytes"]
    verdicts.append(
        Verdict(
            "unchanged night: casbackup reads < 1% of logical",
            read_pct < 1,
            f"{human(unchanged['cas_read_bytes'])} = {read_pct:.3f}%",
        )
    )
    stored_pct = 100 * unchanged["cas_repo_growth"] / unchanged["logical_bytes"]
    verdicts.append(
        Verdict(
            "unchanged night: casbackup stores < 1% of logical",
            stored_pct < 1,
            f"{human(unchanged['cas_repo_growth'])} = {stored_pct:.3f}% "
            f"(packed data {human(unchanged['cas_new_bytes'])})",
        )
    )
    time_pct = 100 * unchanged["cas_wall_s"] / full["cas_wall_s"]
    internal_pct = 100 * unchanged["cas_internal_s"] / max(full["cas_internal_s"], 1e-9)
    verdicts.append(
        Verdict(
            "unchanged night: casbackup wall time < 10% of the full backup's",
            time_pct < 10,
            f"{unchanged['cas_wall_s']:.2f} s / {full['cas_wall_s']:.2f} s = {time_pct:.1f}% "
            f"(its own duration_s: {internal_pct:.1f}%; CLI start-up alone, `list` on an empty "
            f"repository: {result['cas_startup_s']:.2f} s)",
        )
    )
    cas_tp = logical / full["cas_wall_s"]
    restic_tp = logical / full["restic_wall_s"]
    verdicts.append(
        Verdict(
            "full backup throughput >= 3x restic's",
            cas_tp >= 3 * restic_tp,
            f"{cas_tp / MB:.1f} MB/s vs {restic_tp / MB:.1f} MB/s = {cas_tp / restic_tp:.2f}x",
        )
    )
    r = result["restore"]
    speedup = r["restic_wall_s"] / r["cas_wall_s"]
    per_round = ", ".join(
        f"round {i} {x['cas_wall_s']:.2f} s vs {x['restic_wall_s']:.2f} s"
        for i, x in enumerate(r["rounds"], 1)
    )
    verdicts.append(
        Verdict(
            "restore >= 2x restic's restore",
            speedup >= 2,
            f"{r['cas_wall_s']:.2f} s vs {r['restic_wall_s']:.2f} s in two rounds = {speedup:.2f}x "
            f"({per_round})",
        )
    )
    verdicts.append(
        Verdict(
            "restore check: restored rows equal the source's (count, sum(duration_ms))",
            r["rows_match"],
            f"{r['restored_rows']:,} restored, {r['source_rows']:,} in {TABLE}",
        )
    )
    return verdicts


def human(n: float | None) -> str:
    if n is None:
        return ""
    if abs(n) < MB:
        return f"{n / 1000:.1f} kB"
    return f"{n / MB:.1f} MB"


def markdown(result: dict[str, Any]) -> str:
    native = result["engine"] == "chdb"
    head = [
        "#",
        "churn",
        "logical",
        "part-name diff",
        "cas read",
        "cas packed",
        "cas repo +",
        "cas wall s",
        "cas RSS MB",
        "restic repo +",
        "restic wall s",
        "restic RSS MB",
    ]
    if native:
        head += ["BACKUP +", "BACKUP wall s"]
    other = any(n.get("cas_other_wall_s") is not None for n in result["nights"])
    if other:
        head.append("cas wall s, fingerprints on")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    lines[1] = lines[1].replace("---:", ":---", 2)
    for n in result["nights"]:
        logical = n["logical_bytes"]
        cells = [
            str(n["night"]),
            n["label"],
            human(logical),
            f"{human(n['part_diff_bytes'])} ({n['part_diff_parts']}/{n['parts']} parts)",
            human(n["cas_read_bytes"]),
            human(n["cas_new_bytes"]),
            f"{human(n['cas_repo_growth'])} ({100 * n['cas_repo_growth'] / logical:.1f}%)",
            f"{n['cas_wall_s']:.2f}",
            f"{n['cas_peak_rss'] / MB:.0f}",
            f"{human(n['restic_repo_growth'])} ({100 * n['restic_repo_growth'] / logical:.1f}%)"
            + ("" if n["restic_same_parts"] else " (other parts!)"),
            f"{n['restic_wall_s']:.2f}",
            f"{n['restic_peak_rss'] / MB:.0f}",
        ]
        if native:
            cells += [human(n["native_bytes"]), f"{n['native_wall_s']:.2f}"]
        if other:
            cells.append(f"{n['cas_other_wall_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict[str, Any], verdicts: list[Verdict]) -> str:
    d0, r = result["day0"], result["restore"]
    nights = result["nights"]
    totals = {
        "casbackup": sum(n["cas_repo_growth"] for n in nights),
        "restic": sum(n["restic_repo_growth"] for n in nights),
        "part-name diff": sum(n["part_diff_bytes"] for n in nights),
    }
    if result["engine"] == "chdb":
        totals["ClickHouse BACKUP"] = sum(n["native_bytes"] or 0 for n in nights)
    out = [
        f"## {result['engine']}: ClickHouse {result['clickhouse_version']}",
        "",
        f"Day 0: {d0['rows']:,} rows, {human(d0['bytes_on_disk'])} on disk in "
        f"{sum(d0['parts_per_partition'].values())} parts (loaded in {d0['load_s']:.1f} s; background "
        f"merges left parts per partition {d0['parts_per_partition_settled']} after "
        f"{d0['settle_s']:.1f} s; OPTIMIZE to one part each: {d0['consolidate_s']:.1f} s).",
        "",
        markdown(result),
        "",
        "Week totals stored: " + ", ".join(f"{k} {human(v)}" for k, v in totals.items()) + ".",
        "",
        f"Restore of {r['backup']} ({r['source_rows']:,} rows in the source), two rounds in the order "
        "casbackup, restic, restic, casbackup:",
        "",
        *(
            f"- round {i}: casbackup {x['cas_wall_s']:.2f} s (peak RSS {x['cas_peak_rss'] / MB:.0f} MB, "
            f"{x['restored_rows']:,} rows); restic {x['restic_wall_s']:.2f} s "
            f"({human(x['restic_restored_bytes'])} of files, peak RSS {x['restic_peak_rss'] / MB:.0f} MB)"
            for i, x in enumerate(r["rounds"], 1)
        ),
        "",
    ]
    out += [f"- **{'PASS' if v.passed else 'FAIL'}** {v.goal}: {v.detail}" for v in verdicts]
    full = nights[0]
    if full.get("cas_other_wall_s"):
        out.append(
            "- (not a goal) full backup with `[backup] fingerprints = true`: "
            f"{full['cas_other_wall_s']:.2f} s = "
            f"{full['restic_wall_s'] / full['cas_other_wall_s']:.2f}x restic's throughput "
            f"(default, fingerprints off: {full['restic_wall_s'] / full['cas_wall_s']:.2f}x)"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def fresh_workdir(path: Path) -> None:
    if path.exists():
        if any(path.iterdir()) and not (path / MARKER).exists():
            sys.exit(f"refusing to wipe {path}: not empty and not a bench_churn workdir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("created by tools/bench_churn.py; wiped on every run\n")


def make_engine(kind: str, root: Path) -> Engine:
    if kind == "server":
        if not Path(SERVER_BINARY).exists():
            sys.exit(f"{SERVER_BINARY} is not installed")
        return ServerEngine(root)
    return ChdbEngine(root)


def run_engine(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(kind, args.workdir / kind)
    engine.root.mkdir(parents=True)
    engine.start()
    try:
        return Bench(
            engine, args.rows, args.quiet_seconds, args.other_fingerprints, args.step_times
        ).run()
    finally:
        engine.stop()


def environment() -> dict[str, Any]:
    import casbackup

    restic = run_plain([RESTIC, "version"]).strip()
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "casbackup_version": getattr(casbackup, "__version__", "?"),
        "python": platform.python_version(),
        "restic": restic,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def terminate_on_signal() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the server is stopped in `finally`."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["server", "chdb", "both"], default="both")
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="day-0 rows (default: ~1 GB)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/casbackup-bench-churn"))
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--json-out", type=Path, help="write all raw numbers here")
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=15.0,
        help="the table counts as settled after this long without merges or part changes",
    )
    parser.add_argument(
        "--other-fingerprints",
        action="store_true",
        help="also back up every night into a second repository with [backup] fingerprints = "
        "true (the default is off), to show what the row-fingerprint scan costs (not a goal column)",
    )
    parser.add_argument(
        "--step-times",
        type=Path,
        help="run every casbackup process through tools/step_times.py and append the time of "
        "each of its steps to this file (summary: tools/step_times.py --summarize FILE)",
    )
    parser.add_argument("--child-settle", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_settle:
        child_settle(*args.child_settle)
        return
    args.workdir = args.workdir.absolute()
    terminate_on_signal()
    env = environment()
    print(f"$ {env['command']}")
    print(
        f"\ncasbackup {env['casbackup_version']}, Python {env['python']}, {env['restic']}, "
        f"{env['cpus']} cpus, load average {' '.join(f'{x:.2f}' for x in env['load_average'])}\n"
    )
    sys.stdout.flush()
    fresh_workdir(args.workdir)
    # Bytecode compiled ahead, as a wheel install has it: a source checkout
    # run with PYTHONDONTWRITEBYTECODE would otherwise compile every module
    # in every casbackup process (~0.1 s of each start-up here).
    run_plain([PYTHON, "-m", "compileall", "-q", str(ROOT / "casbackup")])
    kinds = ["server", "chdb"] if args.engine == "both" else [args.engine]
    results: dict[str, Any] = {"environment": env, "engines": {}}
    ok = False
    try:
        for kind in kinds:
            result = run_engine(kind, args)
            verdicts = evaluate(result)
            result["verdicts"] = [asdict(v) for v in verdicts]
            results["engines"][kind] = result
            print(report(result, verdicts) + "\n", flush=True)
        ok = True
    finally:
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            print(f"raw numbers: {args.json_out}")
        if ok and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {args.workdir}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:
        sys.exit(f"interrupted ({exc or 'Ctrl-C'})")
