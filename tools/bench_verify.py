#!/usr/bin/env python3
"""How long `verify`'s structure check takes, against the backups kept.

    .venv/bin/python tools/bench_verify.py --backups 7,30,90 --parts 1000 [--workdir DIR]
        [--profile] [--rounds N] [--reuse] [--code DIR ...]

Why: the nightly `run` ends with a structure check that reads every
committed backup's manifest and compares the catalog's chunk list of every
file with the manifests', so its work grows with files x backups kept.

This writes, through the project's own writer (``SnapshotWriter``: packs,
catalog contents, manifest, commit), a local repository with a SQLite
catalog where the CLI keeps it (``catalog.sqlite`` inside the repository):
one table of PARTS parts of 20 small files each (a MergeTree table of many
small parts: 4 files alike in every part, 16 of their own; one chunk per
file), then one backup per night in which one new part appears and every
other file is reused as `create` reuses an unchanged file (its stored chunk
list, not read again). When the count reaches each of --backups, it times
whole CLI processes: ``verify`` (structure only, the default) and
``verify --read-data --subset 5%`` (what `run` verifies by default), then
runs one structure check in a process of its own per code tree and prints
the wall time of its steps (manifests, catalog chunk lists, chunk
locations, the rest) and the peak RSS; ``--profile`` adds cProfile's top
functions (which inflates per-call costs). --reuse keeps an existing --workdir's repository and
goes on from the backups it holds (or only measures, if it holds enough).
--code DIR times the casbackup package found in DIR (a checkout of another
commit) with this interpreter, alternating with the others given, round by
round.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from casbackup.catalog import Catalog
from casbackup.repo.archiver import StoredFile
from casbackup.repo.manifest import Database, Part, PartFile, Table
from casbackup.repo.repository import Repository
from casbackup.snapshot import SnapshotWriter
from casbackup.store.local import LocalStore
from casbackup.verify import Verifier, VerifyOptions

ROOT = Path(__file__).resolve().parent.parent
SHARED = (
    "columns.txt",
    "default_compression_codec.txt",
    "serialization.json",
    "metadata_version.txt",
)
OWN = (
    "checksums.txt",
    "count.txt",
    "partition.dat",
    "minmax_d.idx",
    "primary.cidx",
    *(f"{c}.{ext}" for c in ("d", "user_id", "event", "url", "amount") for ext in ("bin", "cmrk2")),
    "skp_idx_url.idx",
)
assert len(SHARED) + len(OWN) == 20
DEVICE = 2049
CREATE = (
    "CREATE TABLE shop.events (d Date, user_id UInt32, event String, url String, amount UInt64) "
    "ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY (user_id, d)"
)


def part_contents(number: int) -> dict[str, bytes]:
    rng = random.Random(number)
    files = {name: f"{name} shared by every part\n".encode() * 8 for name in SHARED}
    for name in OWN:
        files[name] = rng.randbytes(rng.randrange(64, 4096))
    return files


class Builder:
    """Backs up the table night after night, remembering each stored file as `create`'s reuse does."""

    def __init__(self, root: Path, parts: int) -> None:
        self.root = root
        self.initial = parts
        store = LocalStore(root)
        if (root / "config").exists():
            self.repo = Repository.open(store)
        else:
            root.mkdir(parents=True, exist_ok=True)
            self.repo = Repository.init(store)
        self.catalog = Catalog.open(f"sqlite:///{root / 'catalog.sqlite'}", self.repo.id)
        self.stored: dict[tuple[int, str], StoredFile] = {}
        self.nights = len(self.repo.list_backup_names())

    def close(self) -> None:
        self.catalog.close()

    def night(self) -> float:
        """One more backup: the parts so far plus a new one. Returns its duration."""
        started = time.perf_counter()
        count = self.initial + self.nights  # night 0 holds the initial parts, each night adds one
        name = f"2026-{1 + self.nights // 28:02d}-{1 + self.nights % 28:02d}T020000Z"
        with SnapshotWriter(self.repo, self.catalog, name) as snap:
            parts = []
            for number in range(count):
                contents = None
                files = []
                for position, path in enumerate((*SHARED, *OWN)):
                    stored = self.stored.get((number, path))
                    if stored is None:
                        contents = contents or part_contents(number)
                        stored = snap.archiver.store_bytes(contents[path])
                        self.stored[number, path] = stored
                    snap.add_file(stored)
                    files.append(
                        PartFile(
                            path=path,
                            file_id=stored.file_id,
                            size=stored.size,
                            mode=0o640,
                            dev=DEVICE,
                            ino=1_000_000 + number * 32 + position,
                            mtime_ns=1_790_000_000_000_000_000 + number,
                            ch_checksum=stored.file_id[:16],
                        )
                    )
                parts.append(
                    Part(
                        name=f"202611_{number + 1}_{number + 1}_0",
                        partition_id="202611",
                        partition="202611",
                        min_block=number + 1,
                        max_block=number + 1,
                        level=0,
                        rows=8192,
                        bytes=sum(f.size for f in files),
                        files=files,
                    )
                )
            table = Table(
                database="shop",
                name="events",
                engine="MergeTree",
                create_sql=CREATE,
                uuid="6b7e0c1e-1111-4a2b-9c3d-0123456789ab",
                has_data=True,
                rows=sum(p.rows for p in parts),
                bytes=sum(p.bytes for p in parts),
                parts=parts,
            )
            database = Database(
                name="shop", engine="Atomic", create_sql="CREATE DATABASE shop ENGINE = Atomic"
            )
            snap.commit([database], [table], clickhouse_version="26.9.1.1")
        self.nights += 1
        return time.perf_counter() - started


def code_env(env: dict[str, str], code: Path | None) -> dict[str, str]:
    if code is None:
        return env
    return dict(env, PYTHONPATH=str(code.resolve()))


def timed_cli(root: Path, args: list[str], env: dict[str, str]) -> float:
    """One verify process; its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "casbackup", "--repo", str(root), "verify", "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=False,
    )
    took = time.perf_counter() - started
    report = json.loads(done.stdout or "{}")
    if done.returncode != 0 or not report.get("ok"):
        raise SystemExit(f"verify failed ({done.returncode}): {done.stdout[:2000]} {done.stderr}")
    return took


def phases(root: Path, top: int) -> None:
    """One structure check in this process: wall time of its steps, peak RSS; cProfile if top."""
    import functools
    import resource

    from casbackup import verify
    from casbackup.catalog.index import ChunkIndex

    spent: dict[str, float] = {}

    def timed(owner: type, name: str) -> None:
        call = getattr(owner, name)

        @functools.wraps(call)
        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                key = f"{owner.__name__}.{name}"
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)

    steps = [
        (Repository, "read_manifest"),
        (verify.Verifier, "_compare_chunk_lists"),
        (ChunkIndex, "locate"),
        (verify.Verifier, "_unknown_packs"),
    ]
    for owner, name in [*steps, (verify.Verifier, "_structure")]:
        timed(owner, name)
    profiler = cProfile.Profile() if top else None
    started = time.perf_counter()
    repo = Repository.open(LocalStore(root))
    with Catalog.open(f"sqlite:///{root / 'catalog.sqlite'}", repo.id) as catalog:
        if profiler:
            profiler.enable()
        report = Verifier(repo, catalog, VerifyOptions()).run()
        if profiler:
            profiler.disable()
    took = time.perf_counter() - started
    assert report.ok, report.problems[:3]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  {Path(verify.__file__).parent.parent}: in-process {took:.2f} s"
        f"{' (under cProfile)' if profiler else ''}, peak RSS {peak:.0f} MiB"
    )
    stepped = sum(spent.get(f"{o.__name__}.{n}", 0.0) for o, n in steps)
    for key, value in spent.items():
        print(f"    {key:34s} {value:6.2f} s")
    rest = spent["Verifier._structure"] - stepped
    print(f"    {'rest of _structure':34s} {rest:6.2f} s  (chunk users, pack listing and checks)")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
        print("\n".join("    " + line for line in out.getvalue().splitlines() if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backups", default="7,30,90")
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--code", type=Path, action="append")
    parser.add_argument("--phases-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases_only:
        phases(args.phases_only, args.top if args.profile else 0)
        return
    codes: list[Path | None] = list(args.code or [None])
    targets = sorted(int(n) for n in args.backups.split(","))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_verify_"))
    root = work / "repo"
    if root.exists() and not args.reuse:
        raise SystemExit(f"{root} exists (--reuse to go on from it)")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CASBACKUP_CONFIG=str(work / "casbackup.toml"))
    (work / "casbackup.toml").write_text("")
    builder = Builder(root, args.parts)
    print(f"repository {root}: {builder.nights} backups so far")
    try:
        for target in targets:
            nights = []
            while builder.nights < target:
                nights.append(builder.night())
            if nights:
                print(
                    f"built {len(nights)} backups up to {target}: "
                    f"median {statistics.median(nights):.2f} s each"
                )
            files = (args.parts + target - 1) * 20
            times: dict[tuple[int, str], list[float]] = {}
            modes = {
                "verify": [],
                "verify --read-data --subset 5%": ["--read-data", "--subset", "5%"],
            }
            for _ in range(args.rounds):
                for i, code in enumerate(codes):
                    for mode, extra in modes.items():
                        took = timed_cli(root, extra, code_env(env, code))
                        times.setdefault((i, mode), []).append(took)
            print(f"{target:3d} backups, newest {files} part files:")
            for i, code in enumerate(codes):
                for mode in modes:
                    runs = times[i, mode]
                    print(
                        f"    {code or 'this checkout'!s:24s} {mode:32s} min {min(runs):6.2f} s"
                        f"  (runs {', '.join(f'{t:.2f}' for t in runs)})",
                        flush=True,
                    )
            for code in codes:
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--phases-only",
                        str(root),
                        "--top",
                        str(args.top),
                        *(["--profile"] if args.profile else []),
                    ],
                    env=code_env(env, code),
                    check=True,
                )
    finally:
        builder.close()


if __name__ == "__main__":
    main()
