#!/usr/bin/env python3
"""Many small tables: what each command costs per table, and whether it stays linear.

    .venv/bin/python tools/bench_tables.py [--engine server|chdb|both] [--tables 100,300]
        [--code DIR ...] [--rounds N] [--workdir DIR] [--json-out PATH]

The churn benchmark (bench_churn.py) has one big table; an operator's server
often has hundreds of small ones, where what a command does per table (server
round trips, catalog queries, lookups that list the database) decides its
time, and anything that lists all tables per table grows with the square.

For each engine and each table count: one database of N MergeTree tables
(3 monthly partitions, 1,000 rows each). For each code tree given with
--code (default: this checkout), in a fresh repository: `init`, `create b1`,
`create b2` (nothing changed), `restore b1 --as` into a new database, and
`verify b1 --restore`; every step a whole CLI process, timed from outside.
Trees run alternately, round by round, so that a slow phase of the machine
hits each alike; the table reports the median over rounds and the time per
table. A per-table cost that grows with N is the sign of a listing per table.

--code DIR runs the casbackup package found in DIR (a checkout of another
commit, say) with this interpreter and its libraries, for a side-by-side
of two commits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clickhouse_server import free_port, launch_server, stop_server

STEPS = ("create", "create unchanged", "restore --as", "verify --restore")
USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks>
  <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def table_sql(count: int) -> Iterator[str]:
    yield "CREATE DATABASE many"
    for i in range(count):
        yield (
            f"CREATE TABLE many.t{i} (d Date, x UInt64, s String) ENGINE = MergeTree "
            "PARTITION BY toYYYYMM(d) ORDER BY x"
        )
        yield (
            f"INSERT INTO many.t{i} SELECT toDate('2024-01-01') + number % 90, number, "
            "toString(number) FROM numbers(1000)"
        )


@contextmanager
def server_with_tables(root: Path, count: int) -> Iterator[str]:
    from clickhouse_driver import Client

    port = free_port()
    process = launch_server(
        root,
        tcp_port=port,
        http_port=free_port(),
        users_xml=USERS_XML,
        ready=lambda: Client("127.0.0.1", port=port).execute("SELECT 1"),
    )
    try:
        client = Client("127.0.0.1", port=port)
        for sql in table_sql(count):
            client.execute(sql)
        client.disconnect()
        yield f"clickhouse://127.0.0.1:{port}"
    finally:
        stop_server(process)


@contextmanager
def chdb_with_tables(root: Path, count: int) -> Iterator[str]:
    from chdb import session

    s = session.Session(str(root))
    try:
        for sql in table_sql(count):
            s.query(sql)
    finally:
        s.close()
    yield f"chdb://{root}"


def run_steps(code: Path, url: str, repo: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    base = [sys.executable, "-m", "casbackup", "--repo", str(repo), "--clickhouse", url]
    shutil.rmtree(repo, ignore_errors=True)
    steps = {
        "init": ["init"],
        "create": ["create", "b1"],
        "create unchanged": ["create", "b2"],
        "restore --as": ["restore", "b1", "--as", "many:many_restored"],
        "verify --restore": ["verify", "b1", "--restore"],
    }
    times: dict[str, float] = {}
    for step, args in steps.items():
        clock = time.monotonic()
        done = subprocess.run([*base, *args], env=env, capture_output=True, text=True, cwd=code)
        times[step] = time.monotonic() - clock
        if done.returncode != 0:
            raise SystemExit(f"{code}: {step} failed ({done.returncode}): {done.stderr.strip()}")
    return times


def drop_restored(engine: str, url: str, root: Path) -> None:
    sql = "DROP DATABASE IF EXISTS many_restored"
    if engine == "server":
        from clickhouse_driver import Client

        host, port = url.removeprefix("clickhouse://").split(":")
        Client(host, port=int(port)).execute(sql)
    else:
        from chdb import session

        s = session.Session(str(root))
        s.query(sql)
        s.close()


def measure(
    engine: str, count: int, codes: list[Path], rounds: int, workdir: Path
) -> dict[str, dict[str, list[float]]]:
    root = workdir / f"{engine}-{count}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start: Callable[[Path, int], AbstractContextManager[str]] = (
        server_with_tables if engine == "server" else chdb_with_tables
    )
    results: dict[str, dict[str, list[float]]] = {str(c): {s: [] for s in STEPS} for c in codes}
    with start(root / "data", count) as url:
        for round_ in range(rounds):
            order = codes if round_ % 2 == 0 else list(reversed(codes))
            for code in order:
                times = run_steps(code, url, root / "repo")
                drop_restored(engine, url, root / "data")
                for step in STEPS:
                    results[str(code)][step].append(times[step])
                print(
                    f"  {engine} {count} tables, {code}: "
                    + ", ".join(f"{s} {times[s]:.2f} s" for s in STEPS),
                    file=sys.stderr,
                    flush=True,
                )
    shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=("server", "chdb", "both"), default="both")
    parser.add_argument("--tables", default="100,300", help="comma-separated table counts")
    parser.add_argument("--code", action="append", type=Path, help="casbackup trees to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    codes = [c.resolve() for c in (args.code or [Path(__file__).resolve().parent.parent])]
    engines = ["server", "chdb"] if args.engine == "both" else [args.engine]
    counts = [int(n) for n in args.tables.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tables_"))
    report: dict[str, object] = {}
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    for engine in engines:
        print(f"## {engine}\n")
        print("| tables | code | " + " | ".join(STEPS) + " |")
        print("|---:|:---|" + "---:|" * len(STEPS))
        for count in counts:
            results = measure(engine, count, codes, args.rounds, workdir)
            report[f"{engine}/{count}"] = results
            for code, steps in results.items():
                cells = []
                for step in STEPS:
                    median = statistics.median(steps[step])
                    cells.append(f"{median:.2f} s ({1000 * median / count:.0f} ms/table)")
                print(f"| {count} | {code} | " + " | ".join(cells) + " |", flush=True)
        print()
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
