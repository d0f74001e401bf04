#!/usr/bin/env python3
"""Storage-engine benchmark: store a directory into a repository and read it back.

Measures, in one run on the same data:
  - casbackup store (chunk, hash, dedupe, compress, pack, fsync) and restore;
  - the physical limits it is built from: BLAKE3 alone, zstd alone (same level,
    both cores), plain `cp -r`.
Reports MB/s, peak RSS (each step runs in its own process), objects written,
and the ratio of casbackup's store throughput to the slowest limit.

Usage: python tools/bench_store.py [--workdir DIR] [--scale 1.0] [--json]
The data set (generated once, then reused): 20,000 tiny files, 2 x 300 MB
incompressible, 2 x 300 MB compressible text, 1 x 200 MB of LZ4-like blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MB = 1_000_000


def make_dataset(root: Path, scale: float) -> None:
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(scale):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(42)
    big = int(300 * MB * scale)
    tiny_parts = int(2000 * scale) or 1
    for p in range(tiny_parts):  # ~10 tiny files per "part", like ClickHouse metadata files
        part = root / "tiny" / f"2024{p % 12 + 1:02d}_{p}_{p}_0"
        part.mkdir(parents=True)
        for name in (
            "count.txt",
            "columns.txt",
            "checksums.txt",
            "partition.dat",
            "minmax_d.idx",
            "primary.idx",
            "default_compression_codec.txt",
            "serialization.json",
            "a.mrk2",
            "b.mrk2",
        ):
            (part / name).write_bytes(rng.randbytes(rng.randint(4, 600)))
    for i in range(2):
        write_stream(root / "random" / f"r{i}.bin", big, lambda n: rng.randbytes(n))
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(5000)]
    for i in range(2):
        write_stream(
            root / "text" / f"t{i}.log", big, lambda n: b" ".join(rng.choices(words, k=n // 10))[:n]
        )

    # LZ4-like: literal runs and back-references without entropy coding; zstd
    # still shrinks these, like ClickHouse .bin files.
    def lz4ish(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += rng.randbytes(rng.randint(8, 40))
            out += bytes([rng.randint(0, 15)]) * rng.randint(0, 12)
            out += b"\x00\x00\x04\x00"
        return bytes(out[:n])

    write_stream(root / "lz4ish" / "data.bin", int(200 * MB * scale), lz4ish)
    marker.write_text(str(scale))


def write_stream(path: Path, size: int, produce) -> None:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            block = produce(min(left, 4 * MB))
            out.write(block)
            left -= len(block)


def dataset_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".complete")


def child(step: str, data: str, work: str) -> None:
    """One measured step, run in a fresh process so ru_maxrss is its own."""
    from casbackup.runtime import tune_allocator

    tune_allocator()  # as the casbackup command does
    root, workdir = Path(data), Path(work)
    files = dataset_files(root)
    started = time.perf_counter()
    result: dict[str, object] = {}
    if step == "cp":
        target = workdir / "cp"
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["cp", "-r", str(root), str(target)], check=True)
        subprocess.run(["sync"], check=True)
    elif step == "blake3":
        import blake3

        for path in files:
            blake3.blake3(path.read_bytes(), max_threads=blake3.blake3.AUTO).digest()
    elif step == "zstd":
        import zstandard

        from casbackup.repo.compression import DEFAULT_LEVEL

        compressor = zstandard.ZstdCompressor(level=DEFAULT_LEVEL, threads=2)
        for path in files:
            compressor.compress(path.read_bytes())
    elif step == "store":
        result = store(root, files, workdir)
    elif step == "restore":
        result = restore(workdir)
    elapsed = time.perf_counter() - started
    result["seconds"] = elapsed
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
    print(json.dumps(result))


def store(root: Path, files: list[Path], workdir: Path) -> dict[str, object]:
    from casbackup.store.local import LocalStore

    shutil.rmtree(workdir / "repo", ignore_errors=True)
    return store_repository(
        LocalStore(workdir / "repo"), f"sqlite:///{workdir / 'repo' / 'catalog.sqlite'}", files
    )


def store_repository(
    store: Any, catalog_url: str, files: list[Path], *, upload_threads: int = 2
) -> dict[str, object]:
    """A new repository on ``store`` holding one backup of ``files``, a part per directory."""
    from casbackup.catalog import Catalog
    from casbackup.repo.manifest import Database, Part, PartFile, Table
    from casbackup.repo.repository import Repository
    from casbackup.snapshot import SnapshotWriter

    repo = Repository.init(store)
    with (
        Catalog.open(catalog_url, repo.id) as catalog,
        SnapshotWriter(repo, catalog, "bench", upload_threads=upload_threads) as snap,
    ):
        by_dir: dict[Path, list[PartFile]] = {}
        for path, stored in snap.archiver.store_files(files):
            snap.add_file(stored)
            by_dir.setdefault(path.parent, []).append(
                PartFile(path=path.name, file_id=stored.file_id, size=stored.size)
            )
        parts = [
            Part(
                name=f"all_{i}_{i}_0",
                partition_id="all",
                min_block=i,
                max_block=i,
                level=0,
                rows=0,
                bytes=sum(f.size for f in pfs),
                files=pfs,
            )
            for i, (_, pfs) in enumerate(sorted(by_dir.items()), start=1)
        ]
        table = Table(
            database="bench",
            name="data",
            engine="MergeTree",
            create_sql="-",
            has_data=True,
            parts=parts,
        )
        manifest = snap.commit([Database(name="bench", engine="Atomic", create_sql="-")], [table])
    return {
        "logical_bytes": manifest.stats.logical_bytes,
        "stored_bytes": manifest.stats.new_bytes,
        "objects": sum(1 for _ in repo.store.list("")),
        "packs": sum(1 for _ in repo.store.list("packs/")),
    }


def restore(workdir: Path) -> dict[str, object]:
    from casbackup.store.local import LocalStore

    return restore_repository(
        LocalStore(workdir / "repo"),
        f"sqlite:///{workdir / 'repo' / 'catalog.sqlite'}",
        workdir / "restored",
        threads=2,
    )


def restore_repository(
    store: Any, catalog_url: str, target: Path, *, threads: int
) -> dict[str, object]:
    """Write every part of the backup back, batched and fetched as `casbackup restore` does."""
    from casbackup.catalog import Catalog
    from casbackup.repo.reader import ChunkFetcher, FileTarget, write_files
    from casbackup.repo.repository import Repository
    from casbackup.restore import staging_batches

    repo = Repository.open(store)
    shutil.rmtree(target, ignore_errors=True)
    manifest = repo.read_manifest("bench")
    table = manifest.file_table()
    written = 0
    with Catalog.open(catalog_url, repo.id) as catalog:
        fetcher = ChunkFetcher(repo.store, threads=threads)
        for batch in staging_batches(manifest.tables[0].parts):
            targets = [
                FileTarget(target / part.name / f.path, table[f.file_id])
                for part in batch
                for f in part.files
            ]
            written += write_files(fetcher, catalog.index.locate, targets)
    return {"restored_bytes": written, "fetched_bytes": fetcher.bytes_fetched}


def run_step(step: str, data: Path, work: Path) -> dict[str, float]:
    subprocess.run(["sync"], check=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, str(data), str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/casbackup-bench-store"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    data = args.workdir / "data"
    make_dataset(data, args.scale)
    total = sum(p.stat().st_size for p in dataset_files(data))
    # Warm the page cache so every step reads from memory, like the others.
    # Read in blocks: ru_maxrss survives exec, so a big read here would show
    # up as every child's peak RSS.
    for p in dataset_files(data):
        with open(p, "rb", buffering=0) as handle:
            while handle.read(4 * MB):
                pass
    results = {
        step: run_step(step, data, args.workdir)
        for step in ("cp", "blake3", "zstd", "store", "restore")
    }
    mbps = {step: total / r["seconds"] / MB for step, r in results.items()}
    slowest_limit = min(mbps["cp"], mbps["blake3"], mbps["zstd"])
    report = {
        "dataset_bytes": total,
        "files": len(dataset_files(data)),
        "cpus": os.cpu_count(),
        "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
        "peak_rss_mb": {k: round(r["peak_rss_mb"], 1) for k, r in results.items()},
        "store": results["store"],
        "store_vs_slowest_limit": round(mbps["store"] / slowest_limit, 2),
        "restore_vs_cp": round(mbps["restore"] / mbps["cp"], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"dataset: {total / MB:.0f} MB in {report['files']} files, {report['cpus']} cpus")
    print(f"{'step':10} {'MB/s':>8} {'peak RSS MB':>12}")
    for step in results:
        print(f"{step:10} {mbps[step]:8.1f} {results[step]['peak_rss_mb']:12.1f}")
    s = results["store"]
    print(
        f"stored {s['stored_bytes'] / MB:.0f} MB of {s['logical_bytes'] / MB:.0f} MB "
        f"in {s['objects']} objects ({s['packs']} packs)"
    )
    print(f"store / slowest limit = {report['store_vs_slowest_limit']}  (target >= 0.5)")
    print(f"restore / cp = {report['restore_vs_cp']}")


if __name__ == "__main__":
    main()
