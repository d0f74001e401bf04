#!/usr/bin/env python3
"""S3 store benchmark: backup and restore throughput to a local S3 server vs the local directory store.

On the same data set as tools/bench_store.py (its generator), in one run:
  - the local directory store: bench_store's own store and restore steps;
  - the S3 store against moto's standalone server on loopback (started here):
    the same pipeline (chunk, hash, dedupe, compress, pack) with packs going
    up as multipart uploads, then a restore through parallel ranged GETs.
Each step runs in its own process (peak RSS is its own). moto is an
in-memory Python server sharing the same cores, so the S3 figures measure
casbackup's S3 path and its overheads (signing, HTTP, checksums, the
server's own CPU), not AWS.

Usage: python tools/bench_s3.py [--workdir DIR] [--scale 1.0] [--fetch-threads 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

# tools/ is the script's directory, hence on sys.path.
from bench_store import (
    MB,
    dataset_files,
    make_dataset,
    restore_repository,
    run_step,
    store_repository,
)

BUCKET = "casbackup-bench"
PREFIX = "bench/repo"


def s3_environment(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL_S3=endpoint,
    )
    return env


def s3_store(endpoint: str):  # type: ignore[no-untyped-def]
    """The store as `casbackup --repo s3://...` opens it: default [s3] settings, boto3's environment."""
    from casbackup.store import open_store

    os.environ.update(s3_environment(endpoint))
    return open_store(f"s3://{BUCKET}/{PREFIX}")


def child(step: str, data: str, work: str, endpoint: str, fetch_threads: str) -> None:
    from casbackup.runtime import tune_allocator

    tune_allocator()
    root, workdir = Path(data), Path(work)
    started = time.perf_counter()
    if step == "s3-store":
        result = store_s3(root, dataset_files(root), workdir, endpoint)
    else:
        result = restore_s3(workdir, endpoint, int(fetch_threads))
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
    print(json.dumps(result))


def store_s3(root: Path, files: list[Path], workdir: Path, endpoint: str) -> dict[str, object]:
    """bench_store.store with the repository on S3 and the catalog in a local file."""
    from casbackup.config import S3Settings

    catalog_path = workdir / "s3-catalog.sqlite"
    catalog_path.unlink(missing_ok=True)
    return store_repository(
        s3_store(endpoint),
        f"sqlite:///{catalog_path}",
        files,
        upload_threads=S3Settings().concurrency,
    )


def restore_s3(workdir: Path, endpoint: str, fetch_threads: int) -> dict[str, object]:
    return restore_repository(
        s3_store(endpoint),
        f"sqlite:///{workdir / 's3-catalog.sqlite'}",
        workdir / "s3-restored",
        threads=fetch_threads,
    )


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_moto(port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "wb"),  # noqa: SIM115 -- lives as long as the server
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/{BUCKET}", method="PUT")
            urllib.request.urlopen(request, timeout=2).close()
            return process
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("moto server did not answer within 60 s")


def run_s3_step(
    step: str, data: Path, work: Path, endpoint: str, server_pid: int, fetch_threads: int
) -> dict[str, float]:
    subprocess.run(["sync"], check=True)
    server_cpu = cpu_seconds(server_pid)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            step,
            str(data),
            str(work),
            endpoint,
            str(fetch_threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = cpu_seconds(server_pid) - server_cpu
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/casbackup-bench-s3"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--fetch-threads", type=int, default=4, help="S3 restore: ranged GETs in parallel"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / "data"
    make_dataset(data, args.scale)
    files = dataset_files(data)
    total = sum(p.stat().st_size for p in files)
    for p in files:  # page cache warm, as in bench_store
        with open(p, "rb", buffering=0) as handle:
            while handle.read(4 * MB):
                pass
    results: dict[str, dict[str, float]] = {
        "local store": run_step("store", data, args.workdir),
        "local restore": run_step("restore", data, args.workdir),
    }
    port = free_port()
    server = start_moto(port, args.workdir / "moto.log")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for step in ("s3-store", "s3-restore"):
            name = step.replace("-", " ").replace("s3", "S3")
            results[name] = run_s3_step(
                step, data, args.workdir, endpoint, server.pid, args.fetch_threads
            )
    finally:
        server.terminate()
        server.wait(30)
    mbps = {step: total / r["seconds"] / MB for step, r in results.items()}
    report = {
        "dataset_bytes": total,
        "files": len(files),
        "cpus": os.cpu_count(),
        "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
        "seconds": {k: round(r["seconds"], 2) for k, r in results.items()},
        "peak_rss_mb": {k: round(r["peak_rss_mb"], 1) for k, r in results.items()},
        "s3_server_cpu_s": {
            k: round(r["server_cpu_s"], 1) for k, r in results.items() if "S3" in k
        },
        "s3_store": results["S3 store"],
        "s3_vs_local": {
            "store": round(mbps["S3 store"] / mbps["local store"], 2),
            "restore": round(mbps["S3 restore"] / mbps["local restore"], 2),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"dataset: {total / MB:.0f} MB in {len(files)} files, {report['cpus']} cpus")
    print(f"{'step':14} {'MB/s':>8} {'seconds':>8} {'peak RSS MB':>12} {'server CPU s':>13}")
    for step, r in results.items():
        server_cpu = f"{r['server_cpu_s']:13.1f}" if "server_cpu_s" in r else f"{'':13}"
        print(
            f"{step:14} {mbps[step]:8.1f} {r['seconds']:8.1f} {r['peak_rss_mb']:12.1f} {server_cpu}"
        )
    s = results["S3 store"]
    print(
        f"S3: stored {s['stored_bytes'] / MB:.0f} MB of {s['logical_bytes'] / MB:.0f} MB "
        f"in {s['objects']} objects ({s['packs']} packs)"
    )
    print(
        f"S3 / local: store {report['s3_vs_local']['store']}, "
        f"restore {report['s3_vs_local']['restore']}"
    )


if __name__ == "__main__":
    main()
