"""`casbackup verify`: prove that backups restore, at three depths.

- **structure** (default, no data bytes read): every manifest parses; every
  file's chunks are indexed; every pack they live in exists in the store with
  the size the catalog expects (when not, the pack's trailer says whether the
  pack or the catalog's row is wrong); catalog and store agree on backups and
  packs; and, verifying every backup, the catalog has none of the gaps in its
  references for which gc refuses to run.
- **--read-data**: download packs, check each against its name (BLAKE3 of the
  whole object), every chunk against its id after decompressing to its
  recorded size, and the catalog's chunk locations against the trailers.
  ``--subset`` reads part of them: ``P%`` a window of the pack-id space that
  moves every day (consecutive daily runs cover everything in 100/P days),
  ``n/m`` a fixed group, or a size such as ``2G`` of randomly chosen packs.
- **--restore**: restore into scratch databases (``_casbackup_verify_…``) on
  the same server, checking every staged file against its part's
  ``checksums.txt`` before anything is attached (clickhouse.part_check: the
  restored part is the one ClickHouse wrote, on every server version), then
  per table: parts attached with the recorded rows, a full scan of every
  column (ClickHouse checks its block checksums), ``CHECK TABLE`` where the
  server supports it, and the row fingerprint, if the backup took one,
  compared with the one recorded at backup time. Scratch databases are
  dropped afterwards, also when verification fails.

Nothing is changed: verify never syncs the catalog or repairs anything; it
says what is wrong and what to run.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import blake3
from sqlalchemy import select

from casbackup.catalog import Catalog
from casbackup.catalog.index import batched
from casbackup.catalog.models import COMMITTED, Backup, FileChunk, Pack
from casbackup.catalog.packs import index_gaps
from casbackup.clickhouse.fingerprint import Fingerprint, RowHash, fingerprint, row_hash
from casbackup.clickhouse.server import SCRATCH_PREFIX, ClickHouseServer
from casbackup.clickhouse.sql import qualified
from casbackup.errors import (
    BackupNotFound,
    CasbackupError,
    ClickHouseError,
    IntegrityError,
    NewerServerBackup,
    NoBackups,
    NothingSelected,
    ObjectTooLarge,
    PackMissing,
    PartDamaged,
    TargetUnwritable,
    UsageError,
)
from casbackup.process import ProcessTag
from casbackup.repo import manifest as mf
from casbackup.repo.chunker import chunk_id as digest_of
from casbackup.repo.compression import decompress
from casbackup.repo.pack import PackEntry, parse_pack
from casbackup.repo.repository import Repository
from casbackup.restore import RestoreOptions, RestoreService
from casbackup.selection import select as select_tables
from casbackup.subset import parse_subset

STRUCTURE, DATA, RESTORE, CATALOG = "structure", "data", "restore", "catalog"

# What to do about a pack that is damaged or gone: nothing casbackup can rebuild.
PACK_ADVICE = (
    "restore the pack from a copy of the repository; without one, the backups that need it "
    "cannot be restored whole (`casbackup delete` them)"
)


@dataclass(frozen=True)
class Problem:
    level: str
    object: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.object}: {self.detail}"


@dataclass(frozen=True)
class Located:
    """Where and how a chunk is stored in a pack, as the catalog or the trailer says."""

    offset: int
    length: int
    raw_size: int
    compression: int

    @classmethod
    def of(cls, entry: PackEntry) -> Located:
        """Where the pack's own trailer says the entry's chunk is."""
        return cls(entry.offset, entry.length, entry.raw_size, entry.compression)

    def __str__(self) -> str:
        return (
            f"offset {self.offset} (+{self.length}), {self.raw_size} bytes raw, "
            f"compression {self.compression}"
        )


@dataclass
class TableCheck:
    backup: str
    table: str
    scratch: str
    rows_expected: int | None = None
    rows_found: int | None = None
    fingerprint: str = "not recorded"  # match / mismatch / not recorded / not comparable
    checksums: str = "not run"  # passed / failed / N of M parts have no checksums.txt
    check_table: str = "not supported"
    ok: bool = True


@dataclass
class VerifyReport:
    backups: list[str] = field(default_factory=list)
    files: int = 0
    chunks: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    chunks_verified: int = 0
    subset: str = ""
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # What could not be checked here, through no fault of the backup's.
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class VerifyOptions:
    names: tuple[str, ...] = ()
    read_data: bool = False
    subset: str | None = None
    restore: bool = False
    tables: tuple[str, ...] = ("*.*",)
    threads: int = 4
    # gc's check of the catalog's references (verifying every backup only):
    # 0.45 s at 30 backups of 20,580 part files; `run` has just had gc do it.
    index_gaps: bool = True


Progress = Callable[[str], None]


class Verifier:
    def __init__(
        self,
        repo: Repository,
        catalog: Catalog,
        options: VerifyOptions,
        server: ClickHouseServer | None = None,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.catalog = catalog
        self.options = options
        self.server = server
        self.note = progress or (lambda _m: None)
        self.clock = clock
        self.report = VerifyReport()
        self.manifests: dict[str, mf.Manifest] = {}

    def run(self) -> VerifyReport:
        self._structure()
        if self.options.read_data:
            self._read_data()
        if self.options.restore:
            self._restore()
        return self.report

    def _problem(self, level: str, obj: str, detail: str) -> None:
        self.report.problems.append(Problem(level, obj, detail))

    # --- structure -------------------------------------------------------------------

    def _structure(self) -> None:
        in_store = set(self.repo.list_backup_names())
        with self.catalog.db.read() as conn:
            in_catalog = set(conn.scalars(select(Backup.name).where(Backup.state == COMMITTED)))
        names = list(self.options.names) or sorted(in_store | in_catalog)
        # Backups kept share nearly every part: each is validated once, not once per backup.
        memo = mf.DecodeMemo()
        for name in names:
            if name not in in_store and name not in in_catalog:
                raise BackupNotFound(name=name)  # a typo, not a failed verification
        for name in names:
            if name not in in_store:  # so in the catalog: the check above
                self._problem(
                    STRUCTURE,
                    f"backup {name}",
                    "its manifest is missing from the store (if another host deleted the backup, "
                    "`casbackup catalog sync` forgets it; if not, the backup is lost)",
                )
                continue
            try:
                self.manifests[name] = self.repo.read_manifest(name, memo)
            except CasbackupError as exc:
                # Not also "the catalog does not know it": no sync indexes a manifest that
                # does not decode.
                self._problem(
                    STRUCTURE,
                    f"backup {name}",
                    f"{exc.message} (restore the manifest from a copy of the repository, or "
                    f"`casbackup delete {name}` if the backup is lost)",
                )
                continue
            if name not in in_catalog:
                self._problem(
                    CATALOG,
                    f"backup {name}",
                    "the catalog does not know it (run `casbackup catalog sync`)",
                )
        self.report.backups = names
        self.report.files = sum(len(m.files) for m in self.manifests.values())
        self.users: dict[bytes, set[str]] = defaultdict(set)  # chunk -> backups using it
        for name, m in self.manifests.items():
            for cid in m.chunk_ids():
                self.users[cid].add(name)
        self.report.chunks = len(self.users)
        self._compare_chunk_lists(in_catalog)
        if self.options.index_gaps and not self.options.names:
            # gc's own check, whole-catalog: when it finds gaps gc refuses to run,
            # and a verify that said OK beside that would send the operator nowhere.
            for gap in index_gaps(self.catalog.db):
                self._problem(
                    CATALOG,
                    "the catalog's references",
                    f"{gap} (gc would free what they need, so it refuses to run: "
                    "`casbackup catalog rebuild`)",
                )
        self.locations = self.catalog.index.locate(self.users)
        unindexed = set(self.users) - set(self.locations)
        for name in sorted({n for c in unindexed for n in self.users[c]}):
            count = sum(1 for c in unindexed if name in self.users[c])
            self._problem(
                CATALOG,
                f"backup {name}",
                f"{count} of its chunks are not in the catalog's index (run `casbackup catalog rebuild`)",
            )
        self.store_packs = dict(self.repo.list_packs())
        with self.catalog.db.read() as conn:
            catalog_packs = {
                bytes.fromhex(d): s for d, s in conn.execute(select(Pack.digest, Pack.size)).all()
            }
        referenced: dict[bytes, set[str]] = defaultdict(set)
        located_in: dict[bytes, set[bytes]] = defaultdict(set)
        for cid, location in self.locations.items():
            referenced[location.pack_id] |= self.users[cid]
            located_in[location.pack_id].add(cid)
        self.referenced_packs = referenced
        self.report.packs = len(referenced)
        unknown = set(self.store_packs) - set(catalog_packs)
        elsewhere, unreadable = self._unknown_packs(unknown)
        for pack_id, users in sorted(referenced.items()):
            used_by = ", ".join(sorted(users)[:3]) + (" …" if len(users) > 3 else "")
            if pack_id not in self.store_packs and located_in[pack_id] <= elsewhere:
                # Not damage: another host's gc repacked them since this catalog synced.
                self._problem(
                    CATALOG,
                    f"pack {pack_id.hex()}",
                    f"gone from the store, but the chunks {used_by} need from it are in packs the "
                    "catalog does not know yet (another host's gc repacked them; run "
                    "`casbackup catalog sync`)",
                )
            elif pack_id not in self.store_packs:
                self._missing_pack(pack_id, used_by)
            elif self.store_packs[pack_id] != catalog_packs.get(pack_id):
                self._wrong_size(pack_id, catalog_packs.get(pack_id), used_by)
        for pack_id, message in sorted(unreadable.items()):
            self._problem(
                STRUCTURE,
                f"pack {pack_id.hex()}",
                f"in the store but unreadable ({message}); `casbackup catalog sync` cannot index "
                "it, so no backup can use it: move it away, or restore it from a copy if a "
                "backup needs it",
            )
        indexable = unknown - set(unreadable)
        if indexable:
            self._problem(
                CATALOG,
                f"{len(indexable)} packs",
                f"in the store but not in the catalog, e.g. {min(indexable).hex()} (run `casbackup catalog sync`)",
            )
        gone = {p for p in set(catalog_packs) - set(self.store_packs) if p not in referenced}
        if gone:
            self._problem(
                CATALOG,
                f"{len(gone)} packs",
                f"in the catalog but gone from the store, e.g. {min(gone).hex()} (run `casbackup catalog sync`)",
            )

    def _missing_pack(self, pack_id: bytes, used_by: str) -> None:
        self._problem(
            STRUCTURE,
            f"pack {pack_id.hex()}",
            f"missing from the store (needed by {used_by}); {PACK_ADVICE}",
        )

    def _wrong_size(self, pack_id: bytes, recorded: object, used_by: str) -> None:
        """A pack whose size in the store differs from the catalog's: which of the two is wrong.

        The store is the truth and the catalog an index of it, whose row can be
        damaged while the pack is intact; blaming the pack then sends the
        operator to restore or delete good data. So the trailer is read from
        the end of the object as it is (at most two ranged reads, no data
        bytes). If the footer there matches its trailer's digest, every entry
        lies inside the data area that size leaves, and the trailer lists every
        chunk the catalog locates in the pack where the catalog locates it,
        the object is the pack the catalog indexed, whole, and the catalog's
        row is blamed: a cut or extended object has no such footer at its end,
        and another pack does not hold those chunks there. Otherwise the pack
        is, as before. (A flipped byte inside is --read-data's to find, as in
        any pack.)
        """
        name, size = pack_id.hex(), self.store_packs[pack_id]
        try:
            entries = self.repo.read_trailer(pack_id, size)
        except PackMissing:  # deleted since the listing
            self._missing_pack(pack_id, used_by)
            return
        except IntegrityError as exc:
            why = exc.message
        else:
            in_pack = {e.chunk_id: Located.of(e) for e in entries}
            indexed = self._catalog_locations({pack_id}).get(pack_id, {})
            misplaced = sorted(
                cid for cid, located in indexed.items() if in_pack.get(cid) != located
            )
            if not misplaced:
                self._problem(
                    CATALOG,
                    f"pack {name}",
                    f"the catalog records {recorded} bytes, but the pack is {size} bytes in the "
                    f"store and sound: its trailer fits that size and lists the {len(indexed)} "
                    "chunks the catalog locates in it where the catalog locates them (the "
                    "catalog's row is wrong; run `casbackup catalog rebuild`)",
                )
                return
            more = f" and {len(misplaced) - 1} more" if len(misplaced) > 1 else ""
            why = (
                f"its trailer does not list chunk {misplaced[0].hex()}{more} where the catalog "
                "locates them"
            )
        self._problem(
            STRUCTURE,
            f"pack {name}",
            f"is {size} bytes in the store, the catalog recorded {recorded} (truncated or "
            f"replaced: {why}; needed by {used_by}); {PACK_ADVICE}",
        )

    def _catalog_locations(self, pack_ids: set[bytes]) -> dict[bytes, dict[bytes, Located]]:
        """Where the catalog locates each chunk it indexes in these packs, by pack."""
        indexed: dict[bytes, dict[bytes, Located]] = defaultdict(dict)
        for cid, pack, *located in self.catalog.index.in_packs(pack_ids):
            indexed[bytes.fromhex(pack)][bytes.fromhex(cid)] = Located(*located)
        return indexed

    def _compare_chunk_lists(self, in_catalog: set[str]) -> None:
        """The catalog's chunk list of each file of the backups it knows, against the manifests'.

        A restore takes the lists from the manifest, but gc decides from the
        catalog's which packs backups still need, and create reuses them for
        unchanged files: a wrong list lets gc free a pack a backup needs.
        """
        expected = {
            f.id: f.chunks
            for name, m in self.manifests.items()
            if name in in_catalog
            for f in m.files
        }
        wrong: set[bytes] = set()
        with self.catalog.db.read() as conn:
            # Batch by batch, so that only one batch's lists are held beside the manifests'.
            for batch in batched(sorted(fid.hex() for fid in expected)):
                found: dict[bytes, list[bytes]] = defaultdict(list)
                rows = conn.execute(
                    select(FileChunk.file_digest, FileChunk.chunk_digest)
                    .where(FileChunk.file_digest.in_(batch))
                    .order_by(FileChunk.file_digest, FileChunk.seq)
                )
                for file_digest, chunk_digest in rows:
                    found[bytes.fromhex(file_digest)].append(bytes.fromhex(chunk_digest))
                wrong.update(
                    fid for fid in map(bytes.fromhex, batch) if found.get(fid, []) != expected[fid]
                )
        for name in sorted(in_catalog & set(self.manifests)):
            count = sum(1 for f in self.manifests[name].files if f.id in wrong)
            if count:
                example = min(f.id for f in self.manifests[name].files if f.id in wrong)
                self._problem(
                    CATALOG,
                    f"backup {name}",
                    f"{count} of its files have a chunk list in the catalog that differs from the "
                    f"manifest's, e.g. file {example.hex()} (gc would free what they need: run "
                    "`casbackup catalog rebuild`)",
                )

    def _unknown_packs(self, unknown: set[bytes]) -> tuple[set[bytes], dict[bytes, str]]:
        """The chunks in packs the catalog does not know, and those packs that do not parse.

        Only their trailers are read. A sync indexes the readable ones (another
        host's packs); the others it cannot, so advising it would never help.
        """
        chunks: set[bytes] = set()
        unreadable: dict[bytes, str] = {}
        for pack_id in sorted(unknown):
            try:
                entries = self.repo.read_trailer(pack_id, self.store_packs[pack_id])
            except PackMissing:
                continue  # deleted since the listing (a gc elsewhere)
            except IntegrityError as exc:  # corrupt, or no pack at all
                unreadable[pack_id] = exc.message
                continue
            chunks.update(e.chunk_id for e in entries)
        return chunks, unreadable

    # --- data --------------------------------------------------------------------------

    def _read_data(self) -> None:
        candidates = {
            p: self.store_packs[p] for p in self.referenced_packs if p in self.store_packs
        }
        chosen, self.report.subset = choose_subset(candidates, self.options.subset, self.clock())
        indexed = self._catalog_locations(chosen)
        for position, pack_id in enumerate(sorted(chosen), start=1):
            self._check_pack(pack_id, indexed.get(pack_id, {}))
            if position % 50 == 0:
                self.note(f"read {position} of {len(chosen)} packs")

    def _check_pack(self, pack_id: bytes, indexed: dict[bytes, Located]) -> None:
        name = pack_id.hex()
        needing = sorted(self.referenced_packs.get(pack_id, set()))
        users = ", ".join(needing[:3]) + (" …" if len(needing) > 3 else "")
        try:
            data = self.repo.read_pack(pack_id)
        except PackMissing:
            self._problem(DATA, f"pack {name}", "missing from the store")
            return
        except ObjectTooLarge as exc:
            self._problem(DATA, f"pack {name}", exc.message)
            return
        self.report.packs_read += 1
        self.report.bytes_read += len(data)
        if blake3.blake3(data).digest() != pack_id:
            self._problem(
                DATA,
                f"pack {name}",
                f"content does not match its name (damaged; needed by {users}); {PACK_ADVICE}",
            )
        try:
            entries = parse_pack(data, name)
        except CasbackupError as exc:
            self._problem(DATA, f"pack {name}", exc.message)
            return
        in_pack = {}
        for e in entries:
            in_pack[e.chunk_id] = Located.of(e)
            try:
                raw = decompress(
                    e.compression,
                    data[e.offset : e.end],
                    e.raw_size,
                    chunk=e.chunk_id.hex(),
                    pack=name,
                )
                if digest_of(raw) != e.chunk_id:
                    raise ValueError("BLAKE3 digest mismatch")
                self.report.chunks_verified += 1
            except (CasbackupError, ValueError) as exc:
                detail = exc.message if isinstance(exc, CasbackupError) else str(exc)
                affected = ", ".join(sorted(self.users.get(e.chunk_id, set()))) or "no backup"
                self._problem(
                    DATA,
                    f"chunk {e.chunk_id.hex()} in pack {name}",
                    f"{detail} (used by {affected})",
                )
        for cid, recorded in sorted(indexed.items()):
            actual = in_pack.get(cid)
            if actual is None:
                self._problem(
                    DATA,
                    f"chunk {cid.hex()}",
                    f"the catalog locates it in pack {name}, which does not hold it",
                )
            elif actual != recorded:
                self._problem(
                    DATA,
                    f"chunk {cid.hex()}",
                    f"the catalog locates it at {recorded} in pack {name}, the pack has it at "
                    f"{actual} (run `casbackup catalog rebuild`)",
                )

    # --- restore -----------------------------------------------------------------------

    def _restore(self) -> None:
        if self.server is None:
            raise UsageError(detail="--restore needs a ClickHouse server (--clickhouse)")
        if not self.report.backups:
            raise NoBackups(action="test-restore")
        prefix = f"{SCRATCH_PREFIX}{ProcessTag.current()}_"
        chosen = {
            name: select_tables(manifest.tables, self.options.tables)
            for name, manifest in self.manifests.items()
        }
        if self.options.tables != ("*.*",) and self.manifests and not any(chosen.values()):
            # A drill that restored nothing must not pass.
            raise NothingSelected(patterns=", ".join(self.options.tables))
        for name, manifest in sorted(self.manifests.items()):
            selected = chosen[name]
            if not selected:
                continue
            mapping = {db: f"{prefix}{db}" for db in sorted({t.database for t in selected})}
            try:
                self._restore_backup(name, manifest, selected, mapping)
            finally:
                for scratch in mapping.values():
                    try:
                        self.server.drop_database(scratch)
                    except ClickHouseError as exc:
                        self._problem(
                            RESTORE, f"database {scratch}", f"could not drop it: {exc.message}"
                        )

    def _restore_backup(
        self, name: str, manifest: mf.Manifest, selected: list[mf.Table], mapping: dict[str, str]
    ) -> None:
        assert self.server is not None
        patterns = tuple(exact_pattern(t.database, t.name) for t in selected)
        base = RestoreOptions(
            tables=patterns,
            database_map=mapping,
            threads=self.options.threads,
            check_parts=True,
            keep_merges_stopped=True,  # rows compared with the backup's are the parts' rows
            # The --data-only targets are the scratch tables made just before
            # from the backup's own definitions; a part that differs from its
            # definition is the backup's as it is, which the checks then judge.
            check_column_types=False,
        )
        try:
            RestoreService(
                self.server, self.repo, self.catalog, manifest, replace(base, schema_only=True)
            ).run()
        except TargetUnwritable:
            raise  # this server's fault, not the backup's: every table would fail alike
        except NewerServerBackup as exc:  # this server's age, not the backup's fault
            self.report.skipped.append(
                f"backup {name} not test-restored: made on ClickHouse {exc.fields['made_on']}, "
                f"newer than this server's {exc.fields['version']}; test-restore it on "
                f"ClickHouse {exc.fields['release']} or later"
            )
            return
        except CasbackupError as exc:
            self._problem(RESTORE, f"backup {name}", f"schema: {exc.message}")
            return
        for table in selected:
            if not table.has_data:
                continue
            scratch_db = mapping[table.database]
            check = TableCheck(
                backup=name, table=table.qualified, scratch=f"{scratch_db}.{table.name}"
            )
            self.report.tables.append(check)
            self.note(f"verifying {table.qualified} of {name}")
            checked: dict[str, int] = {}
            try:
                service = RestoreService(
                    self.server,
                    self.repo,
                    self.catalog,
                    manifest,
                    replace(
                        base, tables=(exact_pattern(table.database, table.name),), data_only=True
                    ),
                )
                checked = service.checked
                outcome = service.run()
                # The restored name differs for an inner table (its new view's UUID);
                # the database is the scratch one, whose name may hold dots.
                restored = (
                    outcome.tables[0].target.removeprefix(f"{scratch_db}.")
                    if outcome.tables
                    else table.name
                )
                self._record_checksums(check, table, checked)
                self._check_table(check, table, scratch_db, restored)
            except TargetUnwritable:
                raise  # the scratch disk's fault, not the backup's: every table would fail alike
            except CasbackupError as exc:
                check.ok = False
                if isinstance(exc, PartDamaged):
                    check.checksums = "failed"
                else:  # failed after the check (rows after ATTACH, say): what it found stands
                    self._record_checksums(check, table, checked)
                self._problem(RESTORE, f"{name}: {table.qualified}", exc.message)

    def _record_checksums(
        self, check: TableCheck, table: mf.Table, checked: dict[str, int]
    ) -> None:
        if not checked or check.checksums != "not run":
            return
        unchecked = sum(checked.values())
        check.checksums = (
            f"{unchecked} of {len(table.parts)} parts have no checksums.txt"
            if unchecked
            else "passed"
        )
        if unchecked:
            # Nothing else ties such parts to the frozen data: the fingerprint
            # scan skips them and CHECK TABLE rebuilds a missing checksums.txt
            # and passes.
            check.ok = False
            self._problem(
                RESTORE,
                f"{check.backup}: {check.table}",
                f"{unchecked} of {len(table.parts)} parts have no checksums.txt (written before "
                "2016), so their content cannot be checked; OPTIMIZE TABLE ... FINAL rewrites "
                "them with one",
            )

    def _check_table(self, check: TableCheck, table: mf.Table, database: str, name: str) -> None:
        self._compare_fingerprint(check, table, database, name)
        self._check_server_side(check, database, name)

    def _compare_fingerprint(
        self, check: TableCheck, table: mf.Table, database: str, name: str
    ) -> None:
        """Rows and row hashes of the restored table against those taken at backup time.

        Computed by the expression the backup recorded; if this server would
        hash the table differently (upgraded since), only rows compare.
        """
        assert self.server is not None
        recorded = table_fingerprint(table)
        legacy = recorded is not None and recorded[1] is None
        hashing = row_hash(self.server, database, name, legacy=legacy)
        found = fingerprint(self.server, database, name, hashing)  # reads every column of every row
        check.rows_found = found.rows
        if recorded is None:
            check.fingerprint = "not recorded"
            return
        expected, expression_id = recorded
        check.rows_expected = expected.rows
        if found.rows != expected.rows:
            detail = f"{found.rows} rows after restore, {expected.rows} at backup time"
        elif expression_id is not None and expression_id != hashing.id:
            check.fingerprint = "not comparable"
            return
        elif found.hash != expected.hash and not (
            legacy and self._first_form_matches(expected, database, name, hashing)
        ):
            detail = "same row count, different content (row hashes differ)"
        else:
            check.fingerprint = "match"
            return
        check.fingerprint = "mismatch"
        check.ok = False
        self._problem(RESTORE, f"{check.backup}: {check.table}", detail)

    def _first_form_matches(
        self, expected: Fingerprint, database: str, name: str, later: RowHash
    ) -> bool:
        """Whether an unnamed fingerprint is one of the first releases' form, and matches.

        Both unnamed forms are recorded alike (no expression id); they differ
        only on servers that cannot hash every type (18.16), where the first
        hashed every column through toString. One more scan, only after the
        later form did not match.
        """
        assert self.server is not None
        first = row_hash(self.server, database, name, legacy=True, first=True)
        if first.expression == later.expression:
            return False
        return fingerprint(self.server, database, name, first).hash == expected.hash

    def _check_server_side(self, check: TableCheck, database: str, name: str) -> None:
        """CHECK TABLE, where the server has it: its own checksums of every part."""
        assert self.server is not None
        if self.server.info.has_check_table:
            try:
                rows = self.server.client.query(
                    f"CHECK TABLE {qualified(database, name)} SETTINGS check_query_single_value_result = 1"
                )
                value = next(iter(rows[0].values())) if rows else 1
                check.check_table = "passed" if int(value) == 1 else "failed"
                if check.check_table == "failed":
                    check.ok = False
                    self._problem(
                        RESTORE,
                        f"{check.backup}: {check.table}",
                        "CHECK TABLE found a damaged part",
                    )
            except ClickHouseError as exc:
                # Not a problem: every file was checked against checksums.txt
                # already (parts without one are a problem of their own).
                check.check_table = f"not run: {exc.message}"


def table_fingerprint(table: mf.Table) -> tuple[Fingerprint, str | None] | None:
    """The backup-time fingerprint of a table and the expression it summed.

    The sum over its parts, if every part has one and all name the same
    expression (None: the legacy one). A backup records one expression per
    table, so a mixture means none can be compared.
    """
    fingerprints = [p.fingerprint for p in table.parts]
    if any(fp is None for fp in fingerprints):
        return None
    present = [fp for fp in fingerprints if fp is not None]
    expressions = {fp.expression_id for fp in present}
    if len(expressions) > 1:
        return None
    rows = sum(fp.rows for fp in present)
    digest = sum(fp.hash for fp in present) % 2**64
    return Fingerprint(rows, digest), expressions.pop() if expressions else None


def exact_pattern(database: str, table: str) -> str:
    """A glob that matches exactly ``database.table`` even if the names hold * ? or [."""
    return re.sub(r"([*?\[])", r"[\1]", f"{database}.{table}")


def choose_subset(
    packs: dict[bytes, int], subset: str | None, now: float
) -> tuple[set[bytes], str]:
    """Which packs a --read-data run reads, and a description of the choice."""
    if not subset:
        return set(packs), "all packs"
    try:
        spec = parse_subset(subset)
    except ValueError as exc:
        raise UsageError(detail=f"invalid --subset {subset!r}: {exc}") from None
    if spec.percent is not None:
        day = int(now // 86400)
        start = (day * spec.share) % 1.0
        chosen = {p for p in packs if ((_position(p) - start) % 1.0) < spec.share}
        return (
            chosen,
            f"{spec.percent}% of the pack-id space starting at {start:.3f} (moves every day)",
        )
    if spec.group is not None:
        n, total = spec.group
        chosen = {p for p in packs if int.from_bytes(p[:8], "big") % total == n - 1}
        return chosen, f"group {n} of {total}"
    budget = spec.budget or 0.0
    order = sorted(packs)
    random.shuffle(order)
    chosen, used = set(), 0
    for p in order:
        if used + packs[p] > budget and chosen:
            break
        chosen.add(p)
        used += packs[p]
    return chosen, f"random packs totalling {used} bytes"


def _position(pack_id: bytes) -> float:
    return int.from_bytes(pack_id[:8], "big") / 2**64
