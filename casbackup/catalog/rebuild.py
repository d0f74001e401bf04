"""Bringing the catalog in line with the store, or rebuilding it from the store alone.

The store is the truth: packs (with their trailers) and manifests. ``sync``
indexes what the catalog lacks (packs and manifests written by another host, or
a manifest whose commit the catalog never heard of because the process died)
and forgets committed backups whose manifest is gone. ``rebuild`` is ``sync``
into an empty catalog, written next to the old file and renamed over it, so a
failed rebuild leaves the old catalog in place.

A damaged object (a pack whose trailer does not parse, a manifest that does
not decode, belongs to another repository or needs chunks no pack holds) is
left out and reported, not fatal: one bad backup must not stop new backups,
restores of the others, ``delete`` or a rebuild on a new host. Only gc needs
the strict form (a backup that cannot be indexed raises): it must never free
what such a backup may reference. A pack left out is never gc's to delete,
as gc deletes only indexed packs, so packs are reported in both forms.
"""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import blake3
from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.engine import make_url

from casbackup.catalog import Catalog
from casbackup.catalog.backups import replaced
from casbackup.catalog.database import CatalogDatabase, remove_sqlite_file, sqlite_file
from casbackup.catalog.index import batched, record_pack, repoint
from casbackup.catalog.models import COMMITTED, REFERENCED_FILES_SQL, Backup, Base, Chunk, Pack
from casbackup.catalog.packs import forget_packs
from casbackup.errors import (
    BackupNotFound,
    CatalogError,
    IntegrityError,
    ManifestCorrupt,
    RepositoryError,
)
from casbackup.process import NAME_MAX, TAG_MAX, cut_to_bytes, name_owner, tagged_name
from casbackup.repo import manifest as manifest_codec
from casbackup.repo.repository import ManifestStamp, Repository

Progress = Callable[[str], None]

log = logging.getLogger(__name__)

# ``.catalog.sqlite.rebuild-<pid>_<start>_<rand>``: the new catalog until it is renamed over the old.
REBUILD_INFIX = ".rebuild-"
# What of the catalog's name goes into that: the rest of NAME_MAX holds the dot, the infix, the
# longest tag and SQLite's "-journal". A fixed cut, so that `clean` finds the file of any pid.
_REBUILD_NAME_BYTES = NAME_MAX - len(f".{REBUILD_INFIX}-journal") - TAG_MAX


@dataclass
class SyncReport:
    packs_indexed: int = 0
    backups_imported: int = 0
    backups_forgotten: int = 0
    packs_forgotten: int = 0
    warnings: list[str] = field(default_factory=list)


def sync(
    repo: Repository, catalog: Catalog, progress: Progress | None = None, *, strict: bool = False
) -> SyncReport:
    """Make the catalog agree with the store. Order matters for foreign keys and safety:

    1. forget committed backups whose manifest is gone (deleted elsewhere);
    2. forget packs gone from the store (gc elsewhere), if nothing here still
       needs them: afterwards no dedupe lookup can pick a deleted pack;
    3. index packs the catalog has not seen (their trailers);
    4. import manifests the catalog has not seen, or indexed from another
       manifest of the same name (deleted and made again elsewhere).
    """
    db = catalog.db
    report = SyncReport()
    note = progress or (lambda _msg: None)
    records = catalog.backups

    # The catalog's view first, the store's second. Writers put an object in
    # the store before they record it in the catalog, so whatever this view
    # holds and a later store listing lacks was really deleted. The other way
    # round, a pack or backup recorded between the two reads would look
    # deleted, and be forgotten under a running backup (a race the concurrent
    # backup/gc test caught).
    indexed = records.committed_stamps()
    with db.read() as conn:
        catalog_packs = {bytes.fromhex(d) for d in conn.scalars(select(Pack.digest))}
    in_store = repo.list_backups()
    store_names = set(in_store)
    store_packs = dict(repo.list_packs())
    # A name another host deleted and used again: its rows describe the old
    # backup. They go now, with those of deleted backups, not at the import of
    # the new manifest (step 4): kept through step 2, they would keep the packs
    # only the old backup needed (gone from the store with it) indexed, and a
    # backup taken after this sync would dedupe against them.
    renewed = replaced(indexed, in_store)
    deleted = set(indexed) - store_names
    for name in sorted(deleted | renewed):
        with db.write() as conn:
            conn.execute(delete(Backup).where(Backup.name == name, Backup.state == COMMITTED))
    report.backups_forgotten += len(deleted)
    committed = set(indexed) - renewed

    gone = catalog_packs - set(store_packs)
    kept: set[bytes] = set()
    if gone:
        kept = _packs_still_needed(db, gone)
        unneeded = [p for p in gone if p not in kept]
        forget_packs(db, unneeded)
        report.packs_forgotten = len(unneeded)

    def left_out(what: str, error: RepositoryError) -> None:
        # Not logged here: each caller reports its warnings once, and counts them in its exit code.
        report.warnings.append(f"{what} not indexed: {error.message}")

    for pack_id in sorted(set(store_packs) - catalog_packs):
        try:
            entries = repo.read_trailer(pack_id, store_packs[pack_id])
        except RepositoryError as exc:  # PackMissing too: deleted since the listing
            left_out(f"pack {pack_id.hex()}", exc)
            continue
        with db.write() as conn:
            record_pack(conn, pack_id, store_packs[pack_id], entries, datetime.now(UTC))
        report.packs_indexed += 1
        if report.packs_indexed % 100 == 0:
            note(f"indexed {report.packs_indexed} packs")
    if kept:  # another host's gc may have repacked them: their chunks' copies are indexed now
        _find_moved_chunks(repo, db, kept, set(store_packs))
        # Those whose every needed chunk moved can go now.
        moved = [p for p in kept if p not in _packs_still_needed(db, kept)]
        forget_packs(db, moved)
        report.packs_forgotten += len(moved)

    # A rebuild imports every backup kept, which share nearly every part: each once.
    memo = manifest_codec.DecodeMemo()
    for name in sorted(store_names - committed):
        try:
            data = repo.manifest_object(name)
            manifest = manifest_codec.decode(data, name, memo)
            if manifest.repository_id != repo.id:
                raise ManifestCorrupt(
                    backup=name, detail=f"it belongs to repository {manifest.repository_id}"
                )
            missing = _unindexed_chunks(db, manifest.chunk_ids())
            if missing:
                raise IntegrityError(
                    detail=f"backup {name} references {len(missing)} chunks no pack holds, "
                    f"e.g. {min(missing).hex()}; run `casbackup verify` for details"
                )
        except BackupNotFound:
            continue  # deleted since the listing
        except RepositoryError as exc:
            if strict:
                raise
            left_out(f"backup {name}", exc)
            continue
        with db.write() as conn:
            stamp = ManifestStamp(len(data), in_store[name].version)
            records.import_manifest(conn, manifest, blake3.blake3(data).digest(), stamp)
        report.backups_imported += 1
        note(f"imported backup {name}")
    return report


def _find_moved_chunks(
    repo: Repository, db: CatalogDatabase, gone: set[bytes], in_store: set[bytes]
) -> None:
    """Point chunks of packs gone from the store at their copies in packs still there.

    Another host's gc repacks a pack's live chunks into a new pack, then
    deletes the old one. When this catalog indexed the new pack (in this
    sync or an earlier one), those chunks were indexed already, so the new
    pack got rows only for chunks it alone holds. Such packs hold fewer rows
    than their trailers list; their trailers say where the moved chunks are.
    """
    with db.read() as conn:
        partial = [
            (bytes.fromhex(digest), pk)
            for digest, pk in conn.execute(
                text(
                    "SELECT p.digest, p.id FROM packs p LEFT JOIN chunks c ON c.pack_id = p.id "
                    "GROUP BY p.id, p.digest, p.chunk_count HAVING count(c.digest) < p.chunk_count"
                )
            )
        ]
    for pack_id, pk in partial:
        if pack_id not in in_store or pack_id in gone:
            continue
        try:
            entries = repo.read_trailer(pack_id)
        except RepositoryError:
            continue  # damaged: sync reports packs it cannot read when it indexes them
        with db.write() as conn:
            repoint(conn, pk, entries, gone)


def _packs_still_needed(db: CatalogDatabase, packs: set[bytes]) -> set[bytes]:
    """Packs among ``packs`` holding a chunk some backup in the catalog references."""
    needed: set[bytes] = set()
    with db.read() as conn:
        for batch in batched(sorted(p.hex() for p in packs)):
            rows = conn.execute(
                text(
                    "SELECT DISTINCT p.digest FROM packs p JOIN chunks c ON c.pack_id = p.id "
                    "JOIN file_chunks fc ON fc.chunk_digest = c.digest "
                    f"WHERE fc.file_digest IN ({REFERENCED_FILES_SQL}) AND p.digest IN :batch"
                ).bindparams(bindparam("batch", expanding=True)),
                {"batch": batch},
            )
            needed.update(bytes.fromhex(d) for (d,) in rows)
    return needed


def _unindexed_chunks(db: CatalogDatabase, chunk_ids: set[bytes]) -> set[bytes]:
    present: set[str] = set()
    with db.read() as conn:
        for batch in batched(c.hex() for c in chunk_ids):
            present.update(conn.scalars(select(Chunk.digest).where(Chunk.digest.in_(batch))))
    return {c for c in chunk_ids if c.hex() not in present}


def rebuild(repo: Repository, url: str, progress: Progress | None = None) -> SyncReport:
    """Rebuild the catalog at ``url`` from the store alone."""
    target = sqlite_file(url)
    if target is None:
        with Catalog.open(url, repo.id) as catalog:
            _empty(catalog.db)
            return sync(repo, catalog, progress)
    # Named by its process, so that `clean` can remove it when a kill left it.
    temp = target.with_name(tagged_name(_rebuild_prefix(target)))
    try:
        with Catalog.open(str(make_url(url).set(database=str(temp))), repo.id) as catalog:
            report = sync(repo, catalog, progress)
        # Fold the WAL into the main file so the rename moves one complete file.
        with closing(sqlite3.connect(temp, isolation_level=None)) as raw:
            raw.execute("PRAGMA journal_mode = DELETE")
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(temp, target)
    except OSError as exc:
        # The path in the way: the catalog, or a -wal/-shm file beside it.
        in_the_way = exc.filename2 or exc.filename or target
        raise CatalogError(detail=f"cannot write {in_the_way}: {exc.strerror}") from None
    finally:
        remove_sqlite_file(temp)
    return report


def stale_rebuild_files(url: str) -> list[Path]:
    """Files of SQLite catalog rebuilds whose process is gone (killed before its rename).

    Each is a partial copy of the catalog, as large as the catalog itself;
    nothing else would ever remove it. A rebuild still running is left alone.
    """
    target = sqlite_file(url)
    if target is None:
        return []
    prefix = _rebuild_prefix(target)
    stale = []
    for path in sorted(target.parent.glob(f"{glob.escape(prefix)}*")):
        owner = name_owner(path.name, prefix)
        if owner is not None and not owner.alive():
            stale.append(path)
    return stale


def _rebuild_prefix(target: Path) -> str:
    """The temporary's name up to its tag: the catalog's name, cut if it is near NAME_MAX."""
    return f".{cut_to_bytes(target.name, _REBUILD_NAME_BYTES)}{REBUILD_INFIX}"


def _empty(db: CatalogDatabase) -> None:
    with db.write() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "catalog_meta":
                conn.execute(table.delete())
