#!/usr/bin/env python3
"""How long finding a night's unchanged files takes, against the backups kept.

    .venv/bin/python tools/bench_reuse.py --backups 30 --files 20000

Why: every backup kept records an unchanged file's inode once more, so a
lookup by inode across all committed backups grows with retention, night
after night (docs/design.md, "Change detection"). This builds a catalog
(the real schema, through ``Catalog.open``) holding BACKUPS committed
backups of one table of FILES files, all the same inodes as a table at rest
has, and times ``previous_files`` for those files: by the table first (as
``create`` asks), by inode alone, and for as many files no backup has seen.
The rows are written with plain SQL: the catalog's contents, not a
repository, are what the lookup reads.
"""

from __future__ import annotations

import argparse
import inspect
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from casbackup.catalog import Catalog
from casbackup.catalog.reuse import Identity, previous_files

FILES_PER_PART = 20
DEVICE = 2049
DIGEST = "ab" * 32


def build(path: Path, backups: int, files: int) -> list[Identity]:
    Catalog.open(f"sqlite:///{path}", "0" * 32).close()
    identities = [(DEVICE, 1000 + i, 4096, 1_700_000_000_000_000_000) for i in range(files)]
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO files (digest, size, chunk_count) VALUES (?, 4096, 0)", (DIGEST,))
        for b in range(backups):
            backup = db.execute(
                "INSERT INTO backups (name, state, started_at, hostname, tool_version, "
                "clickhouse_version, logical_bytes, read_bytes, new_bytes, new_chunks, duration_ms) "
                "VALUES (?, 'committed', '2026-01-01 00:00:00', 'h', 'v', '26.9', 0, 0, 0, 0, 0)",
                (f"b{b:04d}",),
            ).lastrowid
            table = db.execute(
                "INSERT INTO backup_tables (backup_id, position, database, name, engine, "
                "create_sql, has_data, rows, bytes, depends_on) "
                "VALUES (?, 0, 'shop', 'events', 'MergeTree', '', 1, 0, 0, '')",
                (backup,),
            ).lastrowid
            for p in range(0, files, FILES_PER_PART):
                part = db.execute(
                    "INSERT INTO parts (table_id, position, name, partition_id, min_block, "
                    "max_block, level, mutation, rows, bytes, disk) "
                    "VALUES (?, ?, ?, 'all', ?, ?, 0, 0, 0, 0, 'default')",
                    (table, p, f"all_{p}_{p}_0", p, p),
                ).lastrowid
                db.executemany(
                    "INSERT INTO part_files (part_id, position, path, file_digest, size, mode, "
                    "dev, ino, mtime_ns, ch_checksum) VALUES (?, ?, ?, ?, ?, 420, ?, ?, ?, ?)",
                    [
                        (part, i, f"c{i}.bin", DIGEST, size, dev, ino, mtime, b"\x01" * 16)
                        for i, (dev, ino, size, mtime) in enumerate(
                            identities[p : p + FILES_PER_PART]
                        )
                    ],
                )
    return identities


def timed(call: object, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "catalog.sqlite"
        identities = build(path, args.backups, args.files)
        new = [(DEVICE, 10**9 + i, 4096, 1) for i in range(len(identities))]
        with Catalog.open(f"sqlite:///{path}", "0" * 32) as catalog:
            if "table" not in inspect.signature(previous_files).parameters:
                # The code before 7072d8b (PYTHONPATH=an older checkout): no table to look in first.
                def lookup(ids: list[Identity], _table: tuple[str, str] | None = None) -> object:
                    return previous_files(catalog.db, ids)
            else:

                def lookup(ids: list[Identity], table: tuple[str, str] | None = None) -> object:
                    return previous_files(catalog.db, ids, table)

            found = lookup(identities, ("shop", "events"))
            assert len(found) == len(identities), "every file is found"  # type: ignore[arg-type]
            cases = {
                "by the table first (create)": lambda: lookup(identities, ("shop", "events")),
                "by inode alone": lambda: lookup(identities),
                "files no backup has seen": lambda: lookup(new, ("shop", "events")),
            }
            print(f"{args.backups} backups x {args.files} files ({args.backups * args.files} rows)")
            for label, call in cases.items():
                fastest, median = timed(call, args.rounds)
                print(f"{label:30s} min {fastest * 1000:8.1f} ms   median {median * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
