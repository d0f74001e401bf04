"""Real processes: backups and gc running together; gc killed with SIGKILL at random points."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casbackup.catalog import Catalog
from casbackup.repo.marks import read_marks
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalStore
from tests.helpers import restore_manifest
from tests.processes.workload import tree_digest

WORKLOAD = [sys.executable, "-m", "tests.processes.workload"]


def check_every_backup_restores(repo_dir: Path, work: Path, label: str = "restored") -> int:
    """Restore every committed backup and compare with what the workload recorded for it."""
    repo = Repository.open(LocalStore(repo_dir))
    names = repo.list_backup_names()
    with Catalog.open(f"sqlite:///{repo_dir / 'catalog.sqlite'}", repo.id) as catalog:
        for name in names:
            expected = (work / "expected" / name).read_text()
            assert (
                tree_digest(
                    restore_manifest(repo, catalog, repo.read_manifest(name), work / label / name)
                )
                == expected
            ), name
    return len(names)


@pytest.mark.slow
def test_backups_and_gc_running_together(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    Repository.init(LocalStore(repo_dir))
    backup = subprocess.Popen(
        [*WORKLOAD, "backup", str(repo_dir), str(tmp_path), "40", "1"], stderr=subprocess.PIPE
    )
    gc = subprocess.Popen([*WORKLOAD, "gc", str(repo_dir), "60"], stderr=subprocess.PIPE)
    _, backup_err = backup.communicate(timeout=600)
    _, gc_err = gc.communicate(timeout=600)
    assert backup.returncode == 0, backup_err.decode()[-3000:]
    assert gc.returncode == 0, gc_err.decode()[-3000:]
    # Two more gc runs with nothing running: every mark ripens.
    for _ in range(2):
        subprocess.run(
            [*WORKLOAD, "gc-once", str(repo_dir), "0.5"], check=True, capture_output=True
        )
    assert check_every_backup_restores(repo_dir, tmp_path) >= 4


def prepare_repository_with_garbage(tmp_path: Path) -> Path:
    repo_dir = tmp_path / "repo"
    Repository.init(LocalStore(repo_dir))
    subprocess.run(
        [*WORKLOAD, "backup", str(repo_dir), str(tmp_path), "30", "7"],
        check=True,
        capture_output=True,
    )
    return repo_dir


@pytest.mark.slow
def test_gc_killed_at_random_points(tmp_path: Path) -> None:
    repo_dir = prepare_repository_with_garbage(tmp_path)
    # How long an uninterrupted gc takes here, to aim the kills inside it.
    probe = tmp_path / "probe"
    subprocess.run(["cp", "-a", str(repo_dir), str(probe)], check=True)
    started = time.monotonic()
    subprocess.run([*WORKLOAD, "gc-once", str(probe), "0.9"], check=True, capture_output=True)
    duration = time.monotonic() - started
    rng = random.Random(11)
    kills = 0
    for attempt in range(12):
        process = subprocess.Popen(
            [*WORKLOAD, "gc-once", str(repo_dir), rng.choice(["0.9", "0.5", "1.0"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.05, 1.0) * duration)
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
        assert check_every_backup_restores(repo_dir, tmp_path, f"after-{attempt}") >= 4
    assert kills >= 6  # most runs were really interrupted
    for _ in range(3):
        result = subprocess.run(
            [*WORKLOAD, "gc-once", str(repo_dir), "0.9"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert check_every_backup_restores(repo_dir, tmp_path, "final") >= 4
    repo = Repository.open(LocalStore(repo_dir))
    assert read_marks(repo.store) == []
    # Nothing unreferenced survives: every pack holds a chunk some backup needs.
    wanted = set().union(*(repo.read_manifest(n).chunk_ids() for n in repo.list_backup_names()))
    for pack_id, size in repo.list_packs():
        assert {e.chunk_id for e in repo.read_trailer(pack_id, size)} & wanted
