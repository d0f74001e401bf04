"""Garbage collection at the repository level: exactness, safety under concurrency, crashes."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from casbackup.catalog import Catalog
from casbackup.errors import LockLost
from casbackup.gc import GcPlan, GcSettings, collect_garbage
from casbackup.lifecycle import delete_backups
from casbackup.repo import keys
from casbackup.repo.marks import Mark, read_marks
from casbackup.repo.pack import parse_pack
from casbackup.repo.repository import Repository
from casbackup.snapshot import SnapshotWriter
from casbackup.store.local import LocalStore
from tests.helpers import restore_manifest, snapshot_directory, tree_contents, write_tree

SMALL_PACKS = 64 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def gc(repo: Repository, catalog: Catalog, clock: Clock, **overrides: Any) -> Any:
    options = {"min_age": 0.0, "repack_below": 0.0, "pack_size": SMALL_PACKS, **overrides}
    return collect_garbage(repo, catalog, GcSettings(**options), run_id="gc-test", clock=clock)


def store_bytes(repo: Repository, prefix: str = "packs/") -> int:
    return sum(i.size for i in repo.store.list(prefix))


def packs_needed_by(repo: Repository, names: list[str]) -> dict[bytes, int]:
    """Packs holding at least one chunk the named backups reference (from the store alone)."""
    wanted = set().union(*(repo.read_manifest(n).chunk_ids() for n in names)) if names else set()
    needed = {}
    for pack_id, size in repo.list_packs():
        if {e.chunk_id for e in repo.read_trailer(pack_id, size)} & wanted:
            needed[pack_id] = size
    return needed


def random_tree(root: Path, seed: int, parts: int = 4, shared: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    common = random.Random(shared)
    files = {}
    for p in range(parts):
        files[f"p{p}/own.bin"] = rng.randbytes(rng.randint(10_000, 120_000))
        files[f"p{p}/shared.bin"] = common.randbytes(50_000)
        files[f"p{p}/count.txt"] = str(rng.randint(0, 100)).encode()
    write_tree(root, files)
    return files


@pytest.fixture
def clock() -> Clock:
    return Clock()


def a_deleted_b_kept(repo: Repository, catalog: Catalog, tmp_path: Path) -> None:
    """Backups a and b of trees that share nothing, a deleted: a's packs are all garbage."""
    random_tree(tmp_path / "a", seed=1, shared=1)
    random_tree(tmp_path / "b", seed=2, shared=2)
    snapshot_directory(repo, catalog, "a", tmp_path / "a", pack_size=SMALL_PACKS)
    snapshot_directory(repo, catalog, "b", tmp_path / "b", pack_size=SMALL_PACKS)
    delete_backups(repo, catalog, ["a"])


def test_gc_frees_exactly_the_unreferenced_packs(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    a_deleted_b_kept(repo, catalog, tmp_path)
    before = store_bytes(repo)
    keep = packs_needed_by(repo, ["b"])
    garbage = before - sum(keep.values())
    assert garbage > 0

    first = gc(repo, catalog, clock)
    assert first.packs_deleted == 0 and first.packs_condemned > 0
    assert store_bytes(repo) == before  # first run only condemns
    clock.advance(1)
    second = gc(repo, catalog, clock)

    assert store_bytes(repo) == sum(keep.values()) == before - garbage
    assert second.bytes_freed == garbage
    assert dict(repo.list_packs()) == keep
    assert read_marks(repo.store) == []
    assert restore_manifest(
        repo, catalog, repo.read_manifest("b"), tmp_path / "out"
    ) == tree_contents(tmp_path / "b")


def test_packs_too_young_to_condemn_are_named_in_the_plan(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    """`forget` then `gc` in a drill freed nothing and said nothing of why: min_age."""
    a_deleted_b_kept(repo, catalog, tmp_path)
    garbage = {p for p, _ in repo.list_packs()} - set(packs_needed_by(repo, ["b"]))
    assert garbage
    clock.now = time.time()  # the packs were written just now

    def plan(min_age: float) -> GcPlan:
        chosen = GcSettings(min_age=min_age, pack_size=SMALL_PACKS)
        return collect_garbage(repo, catalog, chosen, run_id="t", dry_run=True, clock=clock).plan

    young = plan(3600.0)
    assert young.condemn == [] and young.min_age == 3600.0
    assert {a.pack_id for a in young.too_young} == garbage
    ripe = plan(0.0)
    assert {a.pack_id for a in ripe.condemn} == garbage and ripe.too_young == []


def test_gc_splits_a_large_condemnation_into_marks_readers_accept(
    repo: Repository,
    catalog: Catalog,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each mark holds at most MAX_MARK_PACKS packs, and all of them are still freed."""
    import casbackup.gc

    monkeypatch.setattr(casbackup.gc, "MAX_MARK_PACKS", 2, raising=False)
    random_tree(tmp_path / "a", seed=1)
    snapshot_directory(repo, catalog, "a", tmp_path / "a", pack_size=SMALL_PACKS)
    delete_backups(repo, catalog, ["a"])
    garbage = store_bytes(repo)

    first = gc(repo, catalog, clock)
    marks = read_marks(repo.store)
    assert first.packs_condemned >= 3  # two marks at least (pack count varies with upload timing)
    assert len(marks) == (first.packs_condemned + 1) // 2
    assert all(len(m.packs) <= 2 and m.leases is not None for m in marks)
    clock.advance(1)
    second = gc(repo, catalog, clock)
    assert second.bytes_freed == garbage and store_bytes(repo) == 0
    assert read_marks(repo.store) == []


def backed_up_then_deleted(
    repo: Repository,
    catalog: Catalog,
    tmp_path: Path,
    count: int,
    *,
    seed: int,
    shared: int,
    deleted: list[str],
) -> None:
    """Trees t0.. backed up as b0.. in small packs (sharing some files), then ``deleted`` deleted."""
    for i in range(count):
        random_tree(tmp_path / f"t{i}", seed=seed + i, shared=shared)
        snapshot_directory(repo, catalog, f"b{i}", tmp_path / f"t{i}", pack_size=SMALL_PACKS)
    delete_backups(repo, catalog, deleted)


def test_repack_leaves_only_referenced_chunks(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    backed_up_then_deleted(repo, catalog, tmp_path, 3, seed=10, shared=7, deleted=["b0", "b1"])
    gc(repo, catalog, clock, repack_below=1.0)
    clock.advance(1)
    report = gc(repo, catalog, clock, repack_below=1.0)
    assert report.packs_deleted > 0
    wanted = repo.read_manifest("b2").chunk_ids()
    stored = [
        e.chunk_id
        for pack_id, _ in repo.list_packs()
        for e in parse_pack(repo.store.get(keys.pack_key(pack_id)), "p")
    ]
    assert sorted(stored) == sorted(wanted)  # no dead chunk, no duplicate, nothing missing
    assert restore_manifest(
        repo, catalog, repo.read_manifest("b2"), tmp_path / "out"
    ) == tree_contents(tmp_path / "t2")


def test_repack_reads_no_pack_beyond_the_largest_casbackup_writes(
    repo: Repository,
    catalog: Catalog,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from casbackup.errors import ObjectTooLarge
    from casbackup.repo import repository

    backed_up_then_deleted(repo, catalog, tmp_path, 2, seed=20, shared=7, deleted=["b0"])
    monkeypatch.setattr(repository, "MAX_PACK_BYTES", 100)
    with pytest.raises(ObjectTooLarge, match="holds more than 100 bytes, more than any pack"):
        gc(repo, catalog, clock, repack_below=1.0)


def test_dry_run_changes_nothing_and_shows_the_plan(
    repo: Repository, catalog: Catalog, catalog_url: str, tmp_path: Path, clock: Clock
) -> None:
    random_tree(tmp_path / "a", seed=1)
    random_tree(tmp_path / "b", seed=2)
    snapshot_directory(repo, catalog, "a", tmp_path / "a", pack_size=SMALL_PACKS)
    snapshot_directory(repo, catalog, "b", tmp_path / "b", pack_size=SMALL_PACKS)
    delete_backups(repo, catalog, ["a"])

    def state() -> tuple[Any, ...]:
        with sqlite3.connect(catalog_url.removeprefix("sqlite:///")) as raw:
            rows = raw.execute("SELECT digest, state FROM packs ORDER BY digest").fetchall()
        return sorted((i.key, i.size) for i in repo.store.list("")), rows

    before = state()
    plan = collect_garbage(
        repo,
        catalog,
        GcSettings(min_age=0, pack_size=SMALL_PACKS),
        run_id="x",
        dry_run=True,
        clock=clock,
    ).plan
    assert state() == before
    executed = gc(repo, catalog, clock, repack_below=0.5)
    assert [a.pack_id for a in executed.plan.condemn] == [a.pack_id for a in plan.condemn]
    assert [a.pack_id for a in executed.plan.repack] == [a.pack_id for a in plan.repack]


def test_running_backup_keeps_what_it_deduplicated(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    """The race gc must never lose: a backup relies on a chunk, its only other user is deleted, gc runs."""
    random_tree(tmp_path / "old", seed=1)
    snapshot_directory(repo, catalog, "old", tmp_path / "old", pack_size=SMALL_PACKS)
    # A second backup starts and deduplicates against "old"'s chunks (same files)...
    running = SnapshotWriter(repo, catalog, "new", pack_size=SMALL_PACKS)
    paths = sorted(p for p in (tmp_path / "old").rglob("*") if p.is_file())
    stored = dict(running.archiver.store_files(paths))
    assert all(s.new_chunks == 0 for s in stored.values())
    # ...then "old" is deleted and gc runs twice, min age 0: nothing may be deleted yet.
    delete_backups(repo, catalog, ["old"])
    first = gc(repo, catalog, clock)
    clock.advance(3600)
    second = gc(repo, catalog, clock)
    assert first.packs_condemned > 0 and second.packs_deleted == 0
    assert any("still run" in why for _, why in second.plan.waiting_marks)
    # The backup commits; the next gc resurrects the packs instead of deleting them.
    _commit_directory(running, tmp_path / "old", stored)
    clock.advance(1)
    third = gc(repo, catalog, clock)
    assert third.packs_deleted == 0 and third.packs_resurrected == first.packs_condemned
    assert restore_manifest(
        repo, catalog, repo.read_manifest("new"), tmp_path / "out"
    ) == tree_contents(tmp_path / "old")


def test_backup_started_after_condemnation_does_not_rely_on_condemned_packs(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    random_tree(tmp_path / "old", seed=1)
    snapshot_directory(repo, catalog, "old", tmp_path / "old", pack_size=SMALL_PACKS)
    delete_backups(repo, catalog, ["old"])
    first = gc(repo, catalog, clock)  # condemns everything
    condemned = {p for m in read_marks(repo.store) for p in m.packs}
    again = snapshot_directory(repo, catalog, "again", tmp_path / "old", pack_size=SMALL_PACKS)
    assert again.stats.new_chunks > 0  # stored anew instead of relying on condemned packs
    # ...in new packs, not in byte-identical (so same-named) re-creations of condemned ones
    located = catalog.index.locate(again.chunk_ids())
    assert not {loc.pack_id for loc in located.values()} & condemned
    clock.advance(1)
    report = gc(repo, catalog, clock)
    assert report.packs_deleted == first.packs_condemned and report.packs_resurrected == 0
    assert restore_manifest(
        repo, catalog, repo.read_manifest("again"), tmp_path / "out"
    ) == tree_contents(tmp_path / "old")


def test_backup_frozen_past_gc_refuses_to_commit(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    """If the lease was lost (e.g. broken by an operator), chunks may be gone: no commit."""
    random_tree(tmp_path / "old", seed=1)
    snapshot_directory(repo, catalog, "old", tmp_path / "old", pack_size=SMALL_PACKS)
    running = SnapshotWriter(repo, catalog, "late", pack_size=SMALL_PACKS)
    paths = sorted(p for p in (tmp_path / "old").rglob("*") if p.is_file())
    stored = dict(running.archiver.store_files(paths))
    delete_backups(repo, catalog, ["old"])
    repo.store.delete(running.lease.key)  # its lease is gone, as if it had gone stale
    gc(repo, catalog, clock)
    clock.advance(1)
    assert gc(repo, catalog, clock).packs_deleted > 0
    with pytest.raises(LockLost, match="lock object was removed"):
        _commit_directory(running, tmp_path / "old", stored)
    assert "late" not in repo.list_backup_names()


def _commit_directory(writer: SnapshotWriter, root: Path, stored: dict[Path, Any]) -> None:
    from casbackup.repo.manifest import Database, Part, PartFile, Table

    parts = []
    for i, part_dir in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = []
        for path in sorted(p for p in part_dir.rglob("*") if p.is_file()):
            writer.add_file(stored[path])
            files.append(
                PartFile(
                    path=path.relative_to(part_dir).as_posix(),
                    file_id=stored[path].file_id,
                    size=stored[path].size,
                )
            )
        parts.append(
            Part(
                name=part_dir.name,
                partition_id="all",
                min_block=i,
                max_block=i,
                level=0,
                rows=0,
                bytes=sum(f.size for f in files),
                files=files,
            )
        )
    table = Table(
        database="db", name="t", engine="MergeTree", create_sql="-", has_data=True, parts=parts
    )
    writer.commit([Database(name="db", engine="Atomic", create_sql="-")], [table])


def test_gc_interrupted_anywhere_is_finished_by_the_next_run(
    repo: Repository,
    catalog: Catalog,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fail the n-th store operation of a gc run, for every n; the next run completes the work."""
    backed_up_then_deleted(repo, catalog, tmp_path, 4, seed=20, shared=3, deleted=["b0", "b2"])
    expected = {name: tree_contents(tmp_path / f"t{name[1]}") for name in ("b1", "b3")}
    store = repo.store
    # Every write of an object goes through put_pieces (put included, and
    # repacked packs directly), so wrapping it and delete crashes at each one.
    real_put, real_delete = LocalStore.put_pieces, LocalStore.delete
    for failing_at in range(1, 40):
        calls = {"n": 0}

        def counted(real: Any, calls: dict[str, int] = calls, failing_at: int = failing_at) -> Any:
            def wrapper(self: LocalStore, *args: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == failing_at:
                    raise RuntimeError("injected crash")
                return real(self, *args)

            return wrapper

        monkeypatch.setattr(LocalStore, "put_pieces", counted(real_put))
        monkeypatch.setattr(LocalStore, "delete", counted(real_delete))
        with contextlib.suppress(RuntimeError):  # the injected crash
            gc(repo, catalog, clock, repack_below=0.9)
        monkeypatch.setattr(LocalStore, "put_pieces", real_put)
        monkeypatch.setattr(LocalStore, "delete", real_delete)
        clock.advance(10)
        for name, contents in expected.items():
            out = tmp_path / f"out-{failing_at}-{name}"
            assert restore_manifest(repo, catalog, repo.read_manifest(name), out) == contents, (
                failing_at,
                name,
            )
    for _ in range(3):
        gc(repo, catalog, clock, repack_below=0.9)
        clock.advance(10)
    assert read_marks(store) == []
    assert dict(repo.list_packs()) == packs_needed_by(repo, ["b1", "b3"])


class GcMachine(RuleBasedStateMachine):
    """Random create/delete/gc/clock sequences, with a backup sometimes left running across steps."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.root = Path(tempfile.mkdtemp())
        self.repo = Repository.init(LocalStore(self.root / "repo"))
        self.catalog = Catalog.open(f"sqlite:///{self.root / 'c.sqlite'}", self.repo.id)
        self.clock = Clock()
        self.expected: dict[str, dict[str, bytes]] = {}
        self.counter = 0
        self.running: tuple[SnapshotWriter, Path, dict[Path, Any], str] | None = None

    def teardown(self) -> None:
        import shutil

        try:
            if self.running is not None:
                self.running[0].abort()
            self.catalog.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)  # one per example: 25 a run were left

    def _tree(self, seed: int) -> Path:
        self.counter += 1
        path = self.root / f"src{self.counter}"
        random_tree(path, seed=seed, parts=2, shared=seed % 3)
        return path

    @rule(seed=st.integers(0, 6))
    def create(self, seed: int) -> None:
        self.counter += 1
        name = f"b{self.counter}"
        path = self._tree(seed)
        snapshot_directory(self.repo, self.catalog, name, path, pack_size=SMALL_PACKS)
        self.expected[name] = tree_contents(path)

    @rule(seed=st.integers(0, 6))
    def start_backup(self, seed: int) -> None:
        if self.running is not None:
            return
        path = self._tree(seed)
        self.counter += 1
        name = f"r{self.counter}"
        writer = SnapshotWriter(self.repo, self.catalog, name, pack_size=SMALL_PACKS)
        stored = dict(
            writer.archiver.store_files(sorted(p for p in path.rglob("*") if p.is_file()))
        )
        self.running = (writer, path, stored, name)

    @rule()
    def finish_backup(self) -> None:
        if self.running is None:
            return
        writer, path, stored, name = self.running
        self.running = None
        _commit_directory(writer, path, stored)
        self.expected[name] = {f"{p}": c for p, c in tree_contents(path).items()}

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if not self.expected:
            return
        name = data.draw(st.sampled_from(sorted(self.expected)))
        delete_backups(self.repo, self.catalog, [name])
        del self.expected[name]

    @rule(repack=st.sampled_from([0.0, 0.5, 1.0]))
    def collect(self, repack: float) -> None:
        gc(self.repo, self.catalog, self.clock, repack_below=repack)

    @rule(seconds=st.sampled_from([0, 1, 3600]))
    def wait(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def every_committed_backup_is_complete(self) -> None:
        present = {
            e.chunk_id
            for pack_id, size in self.repo.list_packs()
            for e in self.repo.read_trailer(pack_id, size)
        }
        for name in self.expected:
            assert self.repo.read_manifest(name).chunk_ids() <= present, name


GcMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGcStateMachine = GcMachine.TestCase


def test_gc_leaves_a_pack_whose_chunks_are_all_live(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    """A pack with nothing dead is never repacked, however small its live fraction.

    Header, trailer and footer keep a small pack's live bytes under a high
    repack_below; copying its chunks would rebuild the same bytes under the
    same name, condemn it, resurrect it, and never converge.
    """
    (tmp_path / "t" / "p0").mkdir(parents=True)
    (tmp_path / "t" / "p0" / "f.bin").write_bytes(b"x" * 200)
    snapshot_directory(repo, catalog, "b", tmp_path / "t", pack_size=SMALL_PACKS)
    before = dict(repo.list_packs())
    for _ in range(3):
        report = gc(repo, catalog, clock, repack_below=0.99)
        assert (report.packs_repacked, report.packs_condemned) == (0, 0)
        clock.advance(10)
    assert dict(repo.list_packs()) == before and read_marks(repo.store) == []


@pytest.mark.parametrize("synced_between", [False, True])
def test_another_hosts_repack_is_followed_by_this_catalog(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock, synced_between: bool
) -> None:
    """Host A backs up; host B (its own catalog) deletes one backup and gc repacks and deletes
    a pack A's catalog still locates chunks in. A's next sync must follow the chunks to their
    new pack: A restored nothing, verified nothing and its gc failed, until a rebuild.
    With ``synced_between``, A indexed the new pack before the old one was deleted."""
    from casbackup.catalog.rebuild import sync

    backed_up_then_deleted(repo, catalog, tmp_path, 2, seed=40, shared=7, deleted=[])
    with Catalog.open(f"sqlite:///{tmp_path / 'b.sqlite'}", repo.id) as other:
        sync(repo, other)
        delete_backups(repo, other, ["b0"])
        gc(repo, other, clock, repack_below=1.0)  # condemns; repacks b1's chunks elsewhere
        if synced_between:
            sync(repo, catalog)
        clock.advance(1)
        report = gc(repo, other, clock, repack_below=1.0)
        assert report.packs_deleted > 0
    sync(repo, catalog)
    assert restore_manifest(
        repo, catalog, repo.read_manifest("b1"), tmp_path / "out"
    ) == tree_contents(tmp_path / "t1")
    assert gc(repo, catalog, clock).plan is not None  # this host's gc runs too


@pytest.mark.parametrize("same_size", [False, True], ids=["other size", "same size"])
def test_a_name_another_host_deleted_and_used_again_is_indexed_anew(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock, same_size: bool
) -> None:
    """Host B deleted b and made a new b of other data. Host A's backup list still matched the
    store by name, so its catalog kept the old b's rows: its gc saw the new b's packs as
    garbage and deleted them, and its restores read the old chunk lists.

    Manifest sizes told the two apart, except when they were equal: that case is
    made here by giving host A's row the new manifest's size. The store's
    version of the object (a new inode here, a new ETag on S3) tells them apart.
    """
    from casbackup.catalog.rebuild import sync

    random_tree(tmp_path / "old", seed=60, parts=2)
    snapshot_directory(repo, catalog, "b", tmp_path / "old", pack_size=SMALL_PACKS)
    with Catalog.open(f"sqlite:///{tmp_path / 'b.sqlite'}", repo.id) as other:
        sync(repo, other)
        delete_backups(repo, other, ["b"])
        random_tree(tmp_path / "new", seed=61, parts=5)
        snapshot_directory(repo, other, "b", tmp_path / "new", pack_size=SMALL_PACKS)
    if same_size:
        with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
            db.execute(
                "UPDATE backups SET manifest_size = ?",
                (repo.store.stat(keys.manifest_key("b")).size,),
            )
    for _ in range(2):  # condemn, then delete
        gc(repo, catalog, clock)
        clock.advance(1)
    assert restore_manifest(
        repo, catalog, repo.read_manifest("b"), tmp_path / "out"
    ) == tree_contents(tmp_path / "new")


def test_a_replaced_backups_old_packs_are_forgotten_before_a_backup_dedupes_against_them(
    repo: Repository, catalog: Catalog, tmp_path: Path, clock: Clock
) -> None:
    """Host B deleted b, its gc deleted the old b's packs, and it made a new b of other data.
    Host A's sync kept the old b's rows until it imported the new b, so the packs only they
    needed stayed in A's catalog though gone from the store: A's next backup of the same data
    deduplicated against them and committed chunks no pack holds."""
    random_tree(tmp_path / "old", seed=60, parts=2)
    snapshot_directory(repo, catalog, "b", tmp_path / "old", pack_size=SMALL_PACKS)
    with Catalog.open(f"sqlite:///{tmp_path / 'b.sqlite'}", repo.id) as other:
        from casbackup.catalog.rebuild import sync

        sync(repo, other)
        delete_backups(repo, other, ["b"])
        for _ in range(2):  # condemn, then delete the old b's packs
            gc(repo, other, clock)
            clock.advance(1)
        random_tree(tmp_path / "new", seed=61, parts=5)
        snapshot_directory(repo, other, "b", tmp_path / "new", pack_size=SMALL_PACKS)
    snapshot_directory(repo, catalog, "c", tmp_path / "old", pack_size=SMALL_PACKS)
    assert restore_manifest(
        repo, catalog, repo.read_manifest("c"), tmp_path / "out"
    ) == tree_contents(tmp_path / "old")


def test_forgetting_a_dead_run_spares_the_run_that_took_its_name_since(
    repo: Repository, catalog: Catalog
) -> None:
    """`clean --broken` lists the runs that died, then deletes their rows. By name alone, a
    `create` of the same name that took the name back in between (it forgets the dead row and
    starts its own) lost its running row: gc no longer saw what that backup references."""
    from datetime import UTC, datetime

    from casbackup.lifecycle import abandoned_runs, forget_abandoned

    started = datetime(2020, 1, 1, tzinfo=UTC)
    catalog.backups.start("b", started, "host", "0", run_id="dead")
    listed = abandoned_runs(repo, catalog, margin=0.0)
    assert [r.run_id for r in listed] == ["dead"]
    forget_abandoned(catalog, listed)  # the create taking the name back...
    catalog.backups.start("b", started, "host", "0", run_id="live")
    forget_abandoned(catalog, listed)  # ...and clean, with what it listed before
    assert catalog.backups.state_of("b") == "running"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", '"nan"'])
def test_a_mark_whose_time_is_no_time_is_unreadable(value: str) -> None:
    """`now - NaN < min_age` is false: a NaN mark (or -Infinity) skipped the minimum age,
    its packs deleted by the first gc that found its leases ended."""
    data = f'{{"created_at": {value}, "packs": ["{"ab" * 32}"], "leases": []}}'.encode()
    assert Mark.decode("1-ab", data) is None
    assert Mark.decode("1-ab", data.replace(value.encode(), b"1700000000.0")) is not None
