#!/usr/bin/env python3
"""Run one casbackup command and log how long each of its steps took.

    .venv/bin/python tools/step_times.py CASBACKUP-ARGS...    # as `python -m casbackup`
    .venv/bin/python tools/step_times.py --summarize LOG      # min/median/max per step

Why: a week run's wall times say how long a whole process took, not where
the time went (imports, the engine's start, the store, the commit...). This
starts casbackup as `casbackup.launch` does (cyclic GC paused for the
imports, then frozen), wraps the steps listed in STEPS so that each call
writes one line to stderr when it returns, and exits with the command's own
status. Lines look like `step 1.234 BackupService._store_parts 0.987`: the
time since the interpreter reached this script, the step, its duration (s).
`tools/bench_churn.py --step-times LOG` runs every casbackup process of a
week through it and collects the lines; `--summarize` reads such a log.

Wrapping costs a few microseconds per call; the steps are called a few
times per process, never per chunk.
"""

from __future__ import annotations

import functools
import importlib
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

# (module, class or None for a module-level function, function)
STEPS: list[tuple[str, str | None, str]] = [
    ("casbackup.cli.context", None, "connect"),
    ("casbackup.clickhouse.embedded", "EmbeddedClient", "__init__"),
    ("casbackup.clickhouse.embedded", "EmbeddedClient", "close"),
    ("casbackup.repo.repository", "Repository", "open"),
    ("casbackup.repo.repository", "Repository", "write_manifest"),
    ("casbackup.catalog", "Catalog", "open"),
    ("casbackup.catalog.backups", "BackupRecords", "start"),
    ("casbackup.catalog.backups", "BackupRecords", "record_contents"),
    ("casbackup.catalog.backups", "BackupRecords", "mark_committed"),
    ("casbackup.backup", None, "plan_backup"),
    ("casbackup.backup", "BackupService", "_backup_table"),
    ("casbackup.backup", "BackupService", "_unchanged_files"),
    ("casbackup.backup", "BackupService", "_store_parts"),
    ("casbackup.backup", "BackupService", "_server_state"),
    ("casbackup.snapshot", None, "sync"),
    ("casbackup.snapshot", "SnapshotWriter", "__init__"),
    ("casbackup.snapshot", "SnapshotWriter", "_check_references"),
    ("casbackup.snapshot", "SnapshotWriter", "commit"),
    ("casbackup.repo.writer", "ChunkWriter", "flush"),
    ("casbackup.restore", "RestoreService", "plan"),
    ("casbackup.restore", "RestoreService", "_create"),
    ("casbackup.restore", "RestoreService", "_locate"),
    ("casbackup.restore", "RestoreService", "_stage_parts"),
    ("casbackup.restore", "RestoreService", "_check_staged"),
    ("casbackup.restore", "RestoreService", "_attach"),
    ("casbackup.restore", "RestoreService", "_restore_data"),
    ("casbackup.cli.context", "AppContext", "close"),
]
LINE = re.compile(r"^step +([\d.]+) (\S+) ([\d.]+)$")


def log(name: str, seconds: float) -> None:
    sys.stderr.write(f"step {time.perf_counter() - STARTED:.3f} {name} {seconds:.3f}\n")


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        clock = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            log(name, time.perf_counter() - clock)

    return wrapper


def wrap_steps() -> None:
    for module_name, class_name, function_name in STEPS:
        module = importlib.import_module(module_name)
        owner = getattr(module, class_name) if class_name else module
        # Module-level functions are wrapped where they are looked up: in the
        # module that imports them (e.g. `sync` in casbackup.snapshot).
        original = owner.__dict__[function_name] if class_name else getattr(owner, function_name)
        name = f"{class_name or module_name}.{function_name}"
        if isinstance(original, classmethod):
            setattr(owner, function_name, classmethod(timed(name, original.__func__)))
        else:
            setattr(owner, function_name, timed(name, original))


def run(argv: list[str]) -> int:
    from casbackup.launch import load_cli

    casbackup = load_cli()
    log("imports", time.perf_counter() - STARTED)
    wrap_steps()
    status = casbackup(argv)
    log("command", time.perf_counter() - STARTED)
    return status


def summarize(path: Path) -> str:
    """Per step: how many calls, and the min, median and max of their durations."""
    durations: dict[str, list[float]] = defaultdict(list)
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match:
            durations[match.group(2)].append(float(match.group(3)))
    rows = ["| step | calls | min s | median s | max s |", "|---|---:|---:|---:|---:|"]
    for name, values in sorted(durations.items(), key=lambda item: -max(item[1])):
        rows.append(
            f"| {name} | {len(values)} | {min(values):.3f} | "
            f"{statistics.median(values):.3f} | {max(values):.3f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarize"] and len(sys.argv) == 3:
        print(summarize(Path(sys.argv[2])))
        sys.exit(0)
    sys.exit(run(sys.argv[1:]))
