"""Child processes for the concurrency and crash tests (python -m tests.processes.workload ...).

backup REPO WORKDIR ROUNDS SEED  -- back up changing directories, delete old backups,
                                    record what each committed backup must restore to
gc REPO ROUNDS                   -- garbage-collect in a loop, min age 0, random repack threshold
gc-once REPO REPACK_BELOW        -- one gc run (killed at random points by the test)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import blake3

from casbackup.catalog import Catalog
from casbackup.gc import GcSettings, collect_garbage
from casbackup.lifecycle import delete_backups
from casbackup.repo.locks import Lock
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from tests.helpers import snapshot_directory, write_tree

PACK_SIZE = 48 * 1024


def open_repo(path: str) -> tuple[Repository, Catalog]:
    repo = Repository.open(LocalStore(path))
    return repo, Catalog.open(f"sqlite:///{Path(path) / 'catalog.sqlite'}", repo.id)


def tree_digest(files: dict[str, bytes]) -> str:
    h = blake3.blake3()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + blake3.blake3(files[name]).digest())
    return h.hexdigest()


def backup(repo_path: str, workdir: str, rounds: int, seed: int) -> None:
    repo, catalog = open_repo(repo_path)
    rng = random.Random(seed)
    pool = [random.Random(i).randbytes(40_000) for i in range(6)]  # content recurring across rounds
    expected_dir = Path(workdir) / "expected"
    expected_dir.mkdir(parents=True, exist_ok=True)
    live: list[str] = []
    for i in range(rounds):
        source = Path(workdir) / f"src-{seed}-{i}"
        files = {
            f"p{p}/{f}.bin": (
                rng.choice(pool) if rng.random() < 0.6 else rng.randbytes(rng.randint(1, 90_000))
            )
            for p in range(3)
            for f in range(3)
        }
        write_tree(source, files)
        name = f"w{seed}-{i}"
        snapshot_directory(repo, catalog, name, source, pack_size=PACK_SIZE)
        (expected_dir / name).write_text(tree_digest(files))
        live.append(name)
        if len(live) > 3 and rng.random() < 0.7:
            victim = live.pop(rng.randrange(len(live) - 1))
            delete_backups(repo, catalog, [victim])
            (expected_dir / victim).unlink()
    catalog.close()


def gc_loop(repo_path: str, rounds: int) -> None:
    repo, catalog = open_repo(repo_path)
    rng = random.Random(rounds)
    for _ in range(rounds):
        settings = GcSettings(
            min_age=0.0, repack_below=rng.choice([0.0, 0.5, 0.9]), pack_size=PACK_SIZE
        )
        with Lock(repo.store, "gc", exclusive=True, command="gc loop") as lock:
            collect_garbage(repo, catalog, settings, run_id=lock.id)
        time.sleep(rng.random() * 0.05)
    catalog.close()


def gc_once(repo_path: str, repack_below: float) -> None:
    repo, catalog = open_repo(repo_path)
    settings = GcSettings(min_age=0.0, repack_below=repack_below, pack_size=PACK_SIZE)
    with Lock(repo.store, "gc", exclusive=True, command="gc once") as lock:
        report = collect_garbage(repo, catalog, settings, run_id=lock.id)
    print(
        json.dumps(
            {
                "deleted": report.packs_deleted,
                "condemned": report.packs_condemned,
                "repacked": report.packs_repacked,
            }
        )
    )
    catalog.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "backup":
        backup(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "gc":
        gc_loop(args[0], int(args[1]))
    elif command == "gc-once":
        gc_once(args[0], float(args[1]))
    else:
        sys.exit(__doc__)
