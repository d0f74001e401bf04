"""Writing one backup into a repository, from first chunk to committed manifest.

Knows the repository and the catalog, not ClickHouse: the ClickHouse backup
service (``casbackup.backup``) feeds it files and describes tables; tests feed
it directories. The order is the repository contract: packs first (each
recorded in the catalog once stored), then the backup's contents in the
catalog, then the manifest (the commit point), then the catalog row flips to
committed. Anything that fails before the manifest leaves only packs that no
manifest references: garbage for ``gc``, never a half-visible backup.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import blake3

from casbackup import __version__, interrupts
from casbackup.catalog import Catalog
from casbackup.catalog.packs import set_states
from casbackup.catalog.rebuild import sync
from casbackup.errors import (
    BackupExists,
    CasbackupError,
    CatalogError,
    CommittedUnrecorded,
    IntegrityError,
    InterruptedAfterCommit,
    LockLost,
)
from casbackup.lifecycle import abandoned_runs, forget_abandoned
from casbackup.repo.archiver import FileArchiver, StoredFile
from casbackup.repo.compression import DEFAULT_LEVEL, ChunkCompressor
from casbackup.repo.keys import validate_backup_name
from casbackup.repo.locks import Lock
from casbackup.repo.manifest import (
    Database,
    FileContent,
    FileSet,
    Manifest,
    ServerObject,
    Stats,
    Table,
    part_file_bytes,
)
from casbackup.repo.marks import condemned_packs
from casbackup.repo.repository import Repository
from casbackup.repo.writer import DEFAULT_PACK_SIZE, ChunkWriter

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What a backup holds besides tables (see casbackup.server_state)."""

    access: list[ServerObject] = field(default_factory=list)
    access_files: FileSet | None = None
    functions: list[ServerObject] = field(default_factory=list)
    named_collections: list[ServerObject] = field(default_factory=list)
    configs: FileSet | None = None
    partitions: list[str] = field(default_factory=list)


class SnapshotWriter:
    def __init__(
        self,
        repo: Repository,
        catalog: Catalog,
        name: str,
        *,
        compression_level: int = DEFAULT_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        threads: int = 2,
        upload_threads: int = 2,
    ) -> None:
        self.repo = repo
        self.catalog = catalog
        self.name = validate_backup_name(name)
        self.started_at = datetime.now(UTC)
        self._clock = time.monotonic()
        if repo.has_manifest(name):
            raise BackupExists(name=name)
        # The lease first: from here on gc will not delete a pack this backup
        # may come to rely on. Then learn what gc condemned or deleted since
        # the catalog last looked, so dedupe never picks such a pack.
        self.lease = Lock(repo.store, "backup", exclusive=False, command=f"create {name}").acquire()
        try:
            self.sync_report = sync(repo, catalog, strict=False)
            condemned = frozenset(condemned_packs(repo.store))
            set_states(catalog.db, condemned, self.started_at)
            self.backup_id = self._start_row()
        except BaseException:
            self.lease.release()
            raise
        self.writer = ChunkWriter(
            repo.store,
            ChunkCompressor(compression_level),
            partial(catalog.index.record_pack, created_by=self.lease.id),
            pack_size=pack_size,
            upload_threads=upload_threads,
            avoid=condemned,
        )
        self.archiver = FileArchiver(
            repo.config.chunker, self.writer, catalog.index.known, threads=threads
        )
        self.files: dict[bytes, FileContent] = {}
        self.reused_bytes = 0  # bytes of files whose chunk list was reused without reading
        self._finished = False

    def _start_row(self) -> int:
        """Insert this backup's ``running`` row, taking its name back from a dead run.

        A run killed before its manifest (SIGKILL, power loss) leaves a
        ``running`` row of its name, and the name must not stay taken: no
        backup of that name exists, and a retry under the same name is what
        a scheduler does. Only a run whose lease is gone or provably dead
        gives its name up; its packs become garbage for gc, as after any
        failed run. A live run of the same name keeps it (exit 14).
        """
        start = partial(
            self.catalog.backups.start,
            self.name,
            self.started_at,
            socket.gethostname(),
            __version__,
            run_id=self.lease.id,
        )
        try:
            return start()
        except BackupExists:
            dead = [
                run
                for run in abandoned_runs(self.repo, self.catalog, margin=0.0)
                if run.name == self.name
            ]
            if not dead:
                raise
            log.info("backup %s: forgetting the running row of a run that died", self.name)
            forget_abandoned(self.catalog, dead)
            return start()

    def add_file(self, stored: StoredFile) -> None:
        """Remember a stored file's content for the manifest's file table."""
        if stored.file_id not in self.files:
            self.files[stored.file_id] = FileContent(
                id=stored.file_id, size=stored.size, chunks=stored.chunks
            )

    def commit(
        self,
        databases: list[Database],
        tables: list[Table],
        clickhouse_version: str = "",
        extras: ServerState | None = None,
    ) -> Manifest:
        """Write the manifest (the commit point); ``extras``: server state beyond tables."""
        extras = extras or ServerState()
        clock = time.monotonic()
        self.writer.flush()
        log.info("flush of the last packs %.2f s", time.monotonic() - clock)
        referenced = {pf.file_id for t in tables for p in t.parts for pf in p.files}
        for fileset in (extras.access_files, extras.configs):
            referenced |= {f.file_id for f in fileset.files} if fileset else set()
        self._check_references({c for f in referenced for c in self.files[f].chunks})
        manifest = Manifest(
            name=self.name,
            repository_id=self.repo.id,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            hostname=socket.gethostname(),
            tool_version=__version__,
            clickhouse_version=clickhouse_version,
            databases=databases,
            tables=tables,
            files=[self.files[f] for f in sorted(referenced)],
            stats=Stats(
                logical_bytes=part_file_bytes(tables),
                read_bytes=self.archiver.read_bytes,
                new_bytes=self.writer.stats.pack_bytes,
                new_raw_bytes=self.writer.stats.new_raw_bytes,
                new_chunks=self.writer.stats.new_chunks,
                duration_ms=int((time.monotonic() - self._clock) * 1000),
            ),
            access=extras.access,
            access_files=extras.access_files,
            functions=extras.functions,
            named_collections=extras.named_collections,
            configs=extras.configs,
            partitions=extras.partitions,
        )
        self.catalog.backups.record_contents(self.backup_id, manifest)
        # The manifest is the commit point. From its write to the catalog's
        # record of it a signal waits: the catalog then agrees with the store,
        # and a run stopped there says its backup is complete, not "cleaned up".
        # A catalog that fails that record does not undo the commit either: the
        # running row stays, and the next sync replaces it with the manifest.
        unrecorded: CatalogError | None = None
        received: interrupts.SignalReceived | None = None
        try:
            with interrupts.deferred():
                data = self.repo.write_manifest(manifest)
                self._finished = True
                try:
                    self.catalog.backups.mark_committed(
                        self.backup_id, manifest, blake3.blake3(data).digest(), len(data)
                    )
                except CatalogError as exc:
                    unrecorded = exc
        except interrupts.SignalReceived as signalled:
            if not self._finished:
                raise
            received = signalled
        except BaseException:
            # Past the manifest the run is finished, so __exit__ will not
            # abort(): whatever else failed, the writers close and the lease
            # goes here, or the lease stays in the store beating till exit.
            if self._finished:
                self._shutdown()
            raise
        # Closing the writers and releasing the lease come after the commit
        # whatever stopped it: a second signal here (Ctrl-C twice) must still
        # say the backup is complete, not leave as "partial work cleaned up".
        try:
            self._shutdown()
        except interrupts.SignalReceived as signalled:
            received = received or signalled
        if received is None and unrecorded is None:
            try:
                self._record_version(len(data))
            except interrupts.SignalReceived as signalled:
                received = signalled
        if received is not None:
            raise InterruptedAfterCommit(signal=received.name, backup=self.name) from None
        if unrecorded is not None:
            # The database's own words, not its advice: "run the command
            # again" would only meet "backup exists"; the next sync records it.
            cause = unrecorded.fields.get("cause") or unrecorded.message
            raise CommittedUnrecorded(backup=self.name, detail=cause)
        return manifest

    def _record_version(self, size: int) -> None:
        """Record the committed manifest's version (``ManifestStamp``) as listings show it.

        After the commit, with signals no longer held: on S3 the listing may
        be retried for minutes, and a SIGTERM must not wait for it. Failing
        here loses only the version check for this backup (its size is
        recorded), never the backup.
        """
        try:
            stamp = self.repo.manifest_stamp(self.name)
            if stamp is not None and stamp.size == size and stamp.version is not None:
                self.catalog.backups.record_version(self.backup_id, stamp.version)
        except CasbackupError as exc:
            log.warning(
                "backup %s: no version of its manifest recorded: %s", self.name, exc.message
            )

    def _check_references(self, chunks: set[bytes]) -> None:
        """Refuse to commit if gc could have deleted something this backup relies on.

        While the lease is intact, gc deletes no pack condemned after the lease
        began (it may condemn them; the next gc resurrects what this backup
        references). So: the lease must provably still be ours, and every chunk
        must still be indexed. A backup whose lease was lost (broken, or frozen
        past its TTL) never commits.
        """
        try:
            self.lease.check()
        except LockLost as exc:
            raise LockLost(
                what=f"the lease of backup {self.name}", detail=exc.fields["detail"]
            ) from None
        missing = chunks - self.catalog.index.indexed(chunks)
        if missing:
            raise IntegrityError(
                detail=f"backup {self.name} references {len(missing)} chunks the index no longer holds "
                f"(e.g. {min(missing).hex()}); nothing was committed, run it again"
            )

    def abort(self) -> None:
        """Give up: stop workers, forget the running row. Stored packs become garbage."""
        if self._finished:
            return
        self._finished = True
        self._shutdown()
        self.catalog.backups.abandon(self.backup_id)

    def _shutdown(self) -> None:
        try:
            self.archiver.close()
            self.writer.close()
        finally:
            self.lease.release()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._finished:
            self.abort()
