#!/usr/bin/env python3
"""Start-up budget: what every casbackup process pays before it does any work.

Every nightly run, every `list`, every restore starts a Python process that
imports the command line. On a small table that fixed cost is a large share
of the run (the churn benchmark's "unchanged night" goal weighs it against a
full backup), so it is measured here layer by layer, reproducibly, instead of
by hand.

Usage: python tools/bench_startup.py [--rounds 15] [--chdb] [--against CHECKOUT] [--json-out PATH]

Measured, each in fresh processes, rounds alternated so a slow phase of the
machine hits every row alike; medians with the range:
  - layers: one process imports, in this order and with the cyclic GC paused
    as `casbackup.launch` does, the interpreter's own start, typer, pydantic,
    SQLAlchemy's core and its ORM, the native libraries (blake3, zstandard,
    msgpack, pyfastcdc), casbackup's manifest models, its catalog, the
    clickhouse-driver adapter and the rest of the command line; each row is
    the time of that step alone, so the rows add up to the whole import;
  - commands: `python -c pass`, and `casbackup --version` and `casbackup list
    --json` on an empty local repository (the floor under every command);
  - with --chdb: loading chdb as casbackup loads it (pyarrow hidden) and
    starting its engine on an empty data directory;
  - with --against CHECKOUT (a checkout of another commit, e.g. `git
    worktree add /tmp/old COMMIT`): importing `casbackup.cli.main` from it
    (PYTHONPATH, same interpreter and libraries) and from this tree, GC
    paused, alternated: what a change to the command line's imports did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# (label, modules imported in that step), in import order.
LAYERS: list[tuple[str, list[str]]] = [
    ("typer (command line framework)", ["typer"]),
    ("pydantic", ["pydantic"]),
    ("SQLAlchemy core", ["sqlalchemy"]),
    ("SQLAlchemy ORM", ["sqlalchemy.orm"]),
    ("blake3, zstandard, msgpack, pyfastcdc", ["blake3", "zstandard", "msgpack", "pyfastcdc"]),
    ("casbackup manifest models (pydantic)", ["casbackup.repo.manifest"]),
    ("casbackup catalog (ORM models, queries)", ["casbackup.catalog"]),
    ("casbackup clickhouse-driver adapter", ["casbackup.clickhouse.native"]),
    ("rest of casbackup's command line", ["casbackup.cli.main"]),
]

# Runs in the child: prints one JSON list of step durations (seconds). The
# first entry is the interpreter's own start up to the first statement,
# measured against the parent's clock (time.time() is shared between them).
LAYER_PROBE = """
import time
entered = time.time()
import gc, json, sys
gc.disable()
steps = [entered - float(sys.argv[1])]
for modules in json.loads(sys.argv[2]):
    start = time.perf_counter()
    for name in modules:
        __import__(name)
    steps.append(time.perf_counter() - start)
print(json.dumps(steps))
"""

CLI_PROBE = """
import gc, time
gc.disable()
start = time.perf_counter()
import casbackup.cli.main
print(time.perf_counter() - start)
"""

CHDB_PROBE = """
import tempfile, time
from casbackup.clickhouse.embedded import _import_chdb_session
start = time.perf_counter()
session = _import_chdb_session()
loaded = time.perf_counter()
with tempfile.TemporaryDirectory() as path:
    s = session.Session(path)
    s.query("SELECT 1", "TabSeparated")
    started = time.perf_counter()
    s.close()
print(loaded - start, started - loaded)
"""


def run_layers(python: str) -> list[float]:
    proc = subprocess.run(
        [python, "-c", LAYER_PROBE, repr(time.time()), json.dumps([m for _, m in LAYERS])],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    return [float(x) for x in json.loads(proc.stdout)]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO_ROOT)
    return time.perf_counter() - start


def run_cli_import(python: str, checkout: Path) -> float:
    """Seconds to import the command line of ``checkout``, bytecode written as a wheel has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(checkout)
    proc = subprocess.run(
        [python, "-c", CLI_PROBE], capture_output=True, text=True, check=True, cwd="/", env=env
    )
    return float(proc.stdout)


def run_chdb(python: str) -> tuple[float, float]:
    out = subprocess.run(
        [python, "-c", CHDB_PROBE], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.split()
    return float(out[0]), float(out[1])


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "min_ms": min(values) * 1000,
        "max_ms": max(values) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--chdb", action="store_true", help="also measure loading chdb")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="also time importing the command line of another checkout against this one",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="casbackup-startup-") as tmp:
        repo = Path(tmp) / "repo"
        cli = [python, "-m", "casbackup", "-q", "--repo", str(repo)]
        subprocess.run([*cli, "init"], check=True, stdout=subprocess.DEVNULL, cwd=REPO_ROOT)
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "casbackup --version": [python, "-m", "casbackup", "--version"],
            "casbackup list --json (empty local repository)": [*cli, "list", "--json"],
        }
        layers: list[list[float]] = []
        command_times: dict[str, list[float]] = {name: [] for name in commands}
        chdb: list[tuple[float, float]] = []
        against: dict[str, list[float]] = {"this tree": [], str(args.against): []}
        for _ in range(args.rounds):
            if args.against:
                against[str(args.against)].append(run_cli_import(python, args.against))
                against["this tree"].append(run_cli_import(python, REPO_ROOT))
            layers.append(run_layers(python))
            for name, cmd in commands.items():
                command_times[name].append(timed(cmd))
            if args.chdb:
                chdb.append(run_chdb(python))

    labels = ["interpreter start (spawn to first statement)"] + [label for label, _ in LAYERS]
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "layers": {label: summary([r[i] for r in layers]) for i, label in enumerate(labels)},
        "import_total": summary([sum(r) for r in layers]),
        "commands": {name: summary(times) for name, times in command_times.items()},
    }
    if chdb:
        result["chdb"] = {
            "load chdb (pyarrow hidden)": summary([c[0] for c in chdb]),
            "start its engine on an empty directory, SELECT 1": summary([c[1] for c in chdb]),
        }
    if args.against:
        result["cli_import"] = {
            f"import casbackup.cli.main, {name}": summary(times) for name, times in against.items()
        }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['median_ms']:.0f} | {s['min_ms']:.0f}–{s['max_ms']:.0f} |"

    lines = [
        f"Start-up budget, Python {result['python']}, medians of {result['rounds']} rounds (ms):",
        "",
        "| step | median | range |",
        "|---|---:|---:|",
    ]
    lines += [row(name, s) for name, s in result["layers"].items()]
    lines.append(row("**all of the above**", result["import_total"]))
    lines += [row(name, s) for name, s in result["commands"].items()]
    lines += [row(name, s) for name, s in result.get("chdb", {}).items()]
    lines += [row(name, s) for name, s in result.get("cli_import", {}).items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
