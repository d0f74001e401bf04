"""Garbage collection: free what no backup references, safely while backups run.

Planning is apart from doing (``plan_gc`` then ``execute_gc``), so
``gc --dry-run`` shows exactly what a run would do.

## The scheme (details and the argument in docs/design.md)

A pack is deleted in two gc runs, never one:

1. **Condemn.** A pack none of whose chunks any backup in the catalog
   references (or one that is mostly dead, after its live chunks were copied
   into new packs) is listed in a *mark*, a store object
   ``condemned/<id>``. The mark is written first; *then* the backup leases
   alive at that moment are listed and recorded in it.
2. **Delete.** A later run deletes a marked pack only when the mark is *ripe*:
   at least ``min_age`` old, and every lease it recorded has ended (released,
   or stale: its process is gone). A pack that some backup references again by
   then (one that deduplicated against it before the mark) is *resurrected*.

A backup holds its lease from before its first dedupe lookup until after its
manifest is written, and at start it reads the marks and the store's list of
packs, never deduplicating against a condemned or missing pack. So any backup
that might have chosen to rely on a pack either started its lease before the
mark's lease list was taken (and gc waits for it to finish), or started after
the mark was visible (and does not rely on the pack). Before it commits, a
backup checks that its lease is intact and that every chunk it references is
in a live pack, so one that was frozen past its lease TTL refuses to commit.

Named safety margins (``GcSettings``): ``min_age`` (a mark's minimum age, and a
pack's minimum age before it is considered at all: packs of backups still
uploading are young), ``lease_ttl`` (how long a silent lease of another host is
trusted), ``repack_below`` (live fraction under which a pack is repacked).

Every step is safe to interrupt: deletions go store first, then catalog, then
the mark; repacked chunks are recorded in their new pack before the old pack
is condemned; a mark interrupted before its lease list is completed by the
next run. The next run finishes whatever a killed one started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import blake3
from sqlalchemy import select

from casbackup.catalog import Catalog
from casbackup.catalog.index import batched
from casbackup.catalog.models import COMMITTED, Backup
from casbackup.catalog.packs import (
    PackUsage,
    delete_orphan_files,
    forget_packs,
    index_gaps,
    live_entries,
    pack_usage,
    record_repacked,
    set_states,
)
from casbackup.catalog.rebuild import sync
from casbackup.errors import GcBlocked, PackCorrupt, RepositoryError
from casbackup.repo import keys
from casbackup.repo.chunker import chunk_id as digest_of
from casbackup.repo.compression import decompress
from casbackup.repo.locks import DEFAULT_TTL, LockRecord, read_locks
from casbackup.repo.marks import MAX_MARK_PACKS, Mark, new_mark_id, read_marks, write_mark
from casbackup.repo.pack import PackBuilder, parse_pack
from casbackup.repo.repository import Repository
from casbackup.repo.writer import DEFAULT_PACK_SIZE

Clock = Callable[[], float]


@dataclass(frozen=True)
class GcSettings:
    min_age: float = 3600.0
    repack_below: float = 0.5
    lease_ttl: float = DEFAULT_TTL
    pack_size: int = DEFAULT_PACK_SIZE
    only_dead_runs: bool = False  # clean --broken: only packs written by runs that are gone


@dataclass(frozen=True)
class PackAction:
    pack_id: bytes
    size: int
    live_bytes: int = 0

    @property
    def name(self) -> str:
        return self.pack_id.hex()


@dataclass
class GcPlan:
    now: float
    marks: list[Mark]
    delete: list[PackAction] = field(default_factory=list)
    resurrect: list[PackAction] = field(default_factory=list)
    finished_marks: list[Mark] = field(default_factory=list)
    waiting_marks: list[tuple[Mark, str]] = field(default_factory=list)
    incomplete_marks: list[Mark] = field(default_factory=list)
    condemn: list[PackAction] = field(default_factory=list)
    repack: list[PackAction] = field(default_factory=list)
    # Packs it would condemn or repack but for their age (< min_age): a drill's
    # `forget` then `gc` freed nothing, and did not say why.
    too_young: list[PackAction] = field(default_factory=list)
    min_age: float = 0.0

    @property
    def bytes_to_free(self) -> int:
        return sum(a.size for a in self.delete)

    @property
    def bytes_to_condemn(self) -> int:
        return sum(a.size for a in self.condemn) + sum(a.size - a.live_bytes for a in self.repack)


@dataclass
class GcReport:
    plan: GcPlan
    packs_deleted: int = 0
    bytes_freed: int = 0
    chunks_freed: int = 0
    packs_resurrected: int = 0
    packs_condemned: int = 0
    packs_repacked: int = 0
    repack_bytes_written: int = 0
    orphan_files: int = 0
    warnings: list[str] = field(default_factory=list)


def alive_backup_leases(records: list[LockRecord], now: float, ttl: float) -> set[str]:
    return {r.id for r in records if r.kind == "backup" and not r.stale(now, ttl)}


def plan_gc(
    repo: Repository, catalog: Catalog, settings: GcSettings, clock: Clock = time.time
) -> GcPlan:
    gaps = index_gaps(catalog.db)
    if gaps:
        raise GcBlocked(
            detail=f"the catalog's index is incomplete ({'; '.join(gaps)}); "
            "run `casbackup catalog rebuild`"
        )
    now = clock()
    marks = read_marks(repo.store)
    alive = alive_backup_leases(read_locks(repo.store), now, settings.lease_ttl)
    usage = {u.pack_id: u for u in pack_usage(catalog.db)}
    plan = GcPlan(now=now, marks=marks, min_age=settings.min_age)
    committed_runs = committed_run_ids(catalog) if settings.only_dead_runs else set()
    marked: set[bytes] = set()
    for mark in marks:
        marked |= mark.packs
        if mark.leases is None:
            plan.incomplete_marks.append(mark)
            plan.waiting_marks.append(
                (mark, "its lease list was not recorded (interrupted run); completing it")
            )
            continue
        if now - mark.created_at < settings.min_age:
            plan.waiting_marks.append((mark, f"younger than min age ({settings.min_age:.0f} s)"))
            continue
        running = sorted(mark.leases & alive)
        if running:
            plan.waiting_marks.append(
                (mark, f"{len(running)} backup(s) that started before it still run")
            )
            continue
        plan.finished_marks.append(mark)
        for pack in sorted(mark.packs):
            u = usage.get(pack)
            if u is None:
                continue  # already gone from store and catalog
            if u.live_chunks:
                plan.resurrect.append(PackAction(pack, u.size, u.live_bytes))
            else:
                plan.delete.append(PackAction(pack, u.size))
    for u in sorted(usage.values(), key=lambda u: u.pack_id):
        if u.pack_id in marked or (u.created_by in alive):
            continue
        if settings.only_dead_runs and u.created_by in committed_runs:
            # clean --broken: not packs of runs that committed (a deleted backup's
            # garbage is gc's business); unknown writers are packs a killed run
            # uploaded before recording them.
            continue
        if u.live_chunks == 0:
            chosen, action = plan.condemn, PackAction(u.pack_id, u.size)
        elif (
            not settings.only_dead_runs
            and u.live_chunks < u.chunks  # all live: a repack would rewrite the same pack
            and u.live_fraction < settings.repack_below
        ):
            chosen, action = plan.repack, PackAction(u.pack_id, u.size, u.live_bytes)
        else:
            continue
        (chosen if _old_enough(u, now, settings) else plan.too_young).append(action)
    return plan


def committed_run_ids(catalog: Catalog) -> set[str]:
    with catalog.db.read() as conn:
        return {
            r
            for r in conn.scalars(select(Backup.run_id).where(Backup.state == COMMITTED))
            if r is not None
        }


def _old_enough(u: PackUsage, now: float, settings: GcSettings) -> bool:
    return now - u.created_at.timestamp() >= settings.min_age


def execute_gc(
    plan: GcPlan,
    repo: Repository,
    catalog: Catalog,
    settings: GcSettings,
    *,
    run_id: str,
    clock: Clock = time.time,
) -> GcReport:
    report = GcReport(plan=plan)
    now = datetime.fromtimestamp(plan.now, UTC)
    store = repo.store
    # The store's marks are the truth about condemnation; the catalog mirrors them.
    set_states(catalog.db, {p for m in plan.marks for p in m.packs}, now)
    for mark in plan.incomplete_marks:
        _complete_mark(repo, mark, settings, clock)

    # 1. Ripe marks: delete (store, then catalog, then the mark), or resurrect.
    for action in plan.delete:
        store.delete(keys.pack_key(action.pack_id))
        report.packs_deleted += 1
        report.bytes_freed += action.size
    if plan.delete:
        report.chunks_freed = forget_packs(catalog.db, [a.pack_id for a in plan.delete])
    for mark in plan.finished_marks:
        store.delete(mark.key)
    report.packs_resurrected = len(plan.resurrect)

    # 2. Repack mostly-dead packs: copies first, recorded, and only then condemned.
    # A copy must never be byte-identical to (so named like) a pack on its way out.
    # The plan's marks (read once, above) may include ones just finished: their
    # packs are gone or live again, and a name avoided needlessly costs nothing.
    doomed = frozenset(
        {p for m in plan.marks for p in m.packs}
        | {a.pack_id for a in plan.condemn}
        | {a.pack_id for a in plan.repack}
    )
    repacked: list[bytes] = []
    for action in plan.repack:
        try:
            report.repack_bytes_written += _repack(repo, catalog, action, settings, run_id, doomed)
        except PackCorrupt as exc:
            report.warnings.append(
                f"not repacking {action.name}: {exc.message} (run casbackup verify)"
            )
            continue
        repacked.append(action.pack_id)
        report.packs_repacked += 1

    # 3. New mark: packs first, then the leases alive now.
    # One mark per MAX_MARK_PACKS packs, each written in two steps as always,
    # so that no mark grows beyond what readers accept.
    condemned = [a.pack_id for a in plan.condemn] + repacked
    for group in batched(condemned, MAX_MARK_PACKS):
        mark = Mark(new_mark_id(clock()), clock(), frozenset(group), None)
        write_mark(store, mark)
        _complete_mark(repo, mark, settings, clock)
    report.packs_condemned = len(condemned)

    set_states(catalog.db, {p for m in read_marks(store) for p in m.packs}, now)
    with catalog.db.write() as conn:
        report.orphan_files = delete_orphan_files(conn)
    return report


def _complete_mark(repo: Repository, mark: Mark, settings: GcSettings, clock: Clock) -> None:
    """Record the leases alive now in a mark whose packs are already visible."""
    alive = alive_backup_leases(read_locks(repo.store), clock(), settings.lease_ttl)
    write_mark(repo.store, Mark(mark.id, mark.created_at, mark.packs, frozenset(alive)))


def _repack(
    repo: Repository,
    catalog: Catalog,
    action: PackAction,
    settings: GcSettings,
    run_id: str,
    avoid: frozenset[bytes],
) -> int:
    """Copy a pack's live chunks (verified, still compressed) into new packs; returns bytes written."""
    name = action.name
    data = repo.read_pack(action.pack_id)
    if blake3.blake3(data).digest() != action.pack_id:
        raise PackCorrupt(pack=name, detail="content does not match its name")
    keep = live_entries(catalog.db, action.pack_id)
    builder = PackBuilder()
    written = 0
    for entry in parse_pack(data, name):
        if entry.chunk_id not in keep or entry.chunk_id in builder:
            continue
        blob = data[entry.offset : entry.end]
        if (
            digest_of(
                decompress(
                    entry.compression, blob, entry.raw_size, chunk=entry.chunk_id.hex(), pack=name
                )
            )
            != entry.chunk_id
        ):
            raise PackCorrupt(
                pack=name, detail=f"chunk {entry.chunk_id.hex()} does not match its id"
            )
        builder.add(entry.chunk_id, blob, entry.raw_size, entry.compression)
        if builder.size >= settings.pack_size:
            written += _store_repacked(repo, catalog, builder, run_id, avoid)
            builder = PackBuilder()
    if len(builder):
        written += _store_repacked(repo, catalog, builder, run_id, avoid)
    return written


def _store_repacked(
    repo: Repository, catalog: Catalog, builder: PackBuilder, run_id: str, avoid: frozenset[bytes]
) -> int:
    sealed = builder.finish(avoid)
    repo.store.put_pieces(keys.pack_key(sealed.pack_id), sealed.pieces)
    record_repacked(catalog.db, sealed.pack_id, sealed.size, sealed.entries, run_id)
    return sealed.size


def collect_garbage(
    repo: Repository,
    catalog: Catalog,
    settings: GcSettings,
    *,
    run_id: str,
    dry_run: bool = False,
    clock: Clock = time.time,
) -> GcReport:
    """One gc run (the caller holds the exclusive gc lock)."""
    try:
        synced = sync(repo, catalog, strict=True)
    except RepositoryError as exc:
        raise GcBlocked(
            detail=f"a backup in the store cannot be indexed ({exc.message}); "
            "`casbackup delete` removes a backup that is lost"
        ) from None
    plan = plan_gc(repo, catalog, settings, clock)
    report = (
        GcReport(plan=plan)
        if dry_run
        else execute_gc(plan, repo, catalog, settings, run_id=run_id, clock=clock)
    )
    report.warnings[:0] = synced.warnings  # packs whose trailers could not be read
    return report
