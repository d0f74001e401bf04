"""Every error an operator can meet, with the exit code it ends the process with.

Borg's habit: the docstring of each class is its message template, filled from
keyword arguments, so the wording lives next to the class and a test can check
that every class renders. The CLI turns these into one line on stderr and an
exit status in exactly one place (``casbackup.cli.main``). Nothing here imports
anything else of ours.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """Process exit statuses, documented for cron and systemd in docs/operations.md."""

    OK = 0
    WARNING = 1  # finished, but something was skipped (a table, a lock) and said so
    USAGE = 2  # bad command line (click's own code)
    CONFIG = 10
    CLICKHOUSE_CONNECT = 11
    CLICKHOUSE_QUERY = 12
    NOT_FOUND = 13
    CONFLICT = 14
    INTEGRITY = 15
    STORE = 16
    CATALOG = 17
    LOCKED = 18
    VERIFY_FAILED = 19
    SOURCE_FILES = 20
    TARGET_FILES = 21
    INTERNAL = 70
    INTERRUPTED = 130


class CasbackupError(Exception):
    """{detail}"""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = (self.__doc__ or "{detail}").strip().splitlines()[0]
        fields = {name: clip(value) for name, value in self.fields.items()}
        try:
            return template.format(**fields)
        except (KeyError, IndexError):  # a missing field must not hide the error itself
            return f"{type(self).__name__}: {fields}"


# Longer than any path (PATH_MAX is 4096 bytes) or name ClickHouse accepts in practice.
FIELD_MAX = 4096


def clip(value: Any) -> Any:
    """A string field cut to FIELD_MAX characters, its start and end kept; anything else as is.

    Fields carry names and types read back from repository data, which is
    untrusted: a hostile columns.txt can hold a 64 MiB type, and the error
    naming it must stay one line a terminal or a log can take.
    """
    if not isinstance(value, str) or len(value) <= FIELD_MAX:
        return value
    keep = FIELD_MAX // 2
    return f"{value[:keep]}...[{len(value) - 2 * keep} characters]...{value[-keep:]}"


# --- configuration -----------------------------------------------------------


class ConfigError(CasbackupError):
    """configuration error: {detail}"""

    exit_code = ExitCode.CONFIG


class UsageError(CasbackupError):
    """{detail}"""

    exit_code = ExitCode.USAGE


# --- object stores -------------------------------------------------------------


class StoreError(CasbackupError):
    """object store error: {detail}"""

    exit_code = ExitCode.STORE


class ObjectNotFound(StoreError):
    """object not found in the store: {key}"""


class ObjectExists(StoreError):
    """object already exists in the store: {key}"""

    exit_code = ExitCode.CONFLICT


class NotAnObject(StoreError):
    """{key} in the store at {location} is {kind}, not an object; move it away"""

    # A local store only: a key is an object or nothing, and a directory (or a
    # FIFO, a device, a socket) is neither. Treating it as "absent" let `create b5` run a whole backup
    # before its manifest could not be written over manifests/b5/.
    exit_code = ExitCode.INTEGRITY


class InvalidKey(StoreError):
    """invalid object key {key!r}: {reason}"""


class StoreFull(StoreError):
    """no space left in the store while writing {key} ({detail})"""


class StorePermissionDenied(StoreError):
    """permission denied by the store at {key} ({detail})"""


# --- repository format and integrity -----------------------------------------


class RepositoryError(CasbackupError):
    """repository error: {detail}"""

    exit_code = ExitCode.INTEGRITY


class RepositoryNotFound(RepositoryError):
    """no casbackup repository at {location}: if backups should be there, check the location (bucket, prefix, endpoint; --repo, CASBACKUP_REPO, repository.location); `casbackup init` would start a new, empty one"""

    exit_code = ExitCode.NOT_FOUND


class RepositoryExists(RepositoryError):
    """a casbackup repository already exists at {location}"""

    exit_code = ExitCode.CONFLICT


class ConfigMissing(RepositoryError):
    """{location} has objects under {remains} but no `config` object; {advice}"""

    # Not RepositoryNotFound: its advice, `casbackup init`, would give the
    # repository a new id and cut every existing backup off from it.


class ConfigChanged(RepositoryError):
    """the `config` object of {location} names repository {config_id}, but manifest {name} and the catalog record {recorded}: the config was changed or replaced; restore it from a copy, or move it away and run `casbackup init --recover`, which writes it back with the id the manifests record"""

    # Not CatalogMismatch: its advice, `casbackup catalog rebuild`, would index
    # the repository under the wrong id and leave every backup out.


class UnsupportedFormat(RepositoryError):
    """{what} has format version {found}, this casbackup reads version {supported}; {advice}"""


class IntegrityError(RepositoryError):
    """integrity check failed: {detail}"""


class GcBlocked(IntegrityError):
    """gc frees nothing while {detail}"""


class ChunkCorrupt(IntegrityError):
    """chunk {chunk} in pack {pack} is corrupt: {detail}"""


class PackCorrupt(IntegrityError):
    """pack {pack} is corrupt: {detail}"""


class PackMissing(IntegrityError):
    """pack {pack} is referenced but missing from the store (if another host's gc repacked it, `casbackup catalog sync` finds the copy)"""


class PackLost(PackMissing):
    """pack {pack} is referenced but missing from the store, also after this run synced the catalog: what uses it cannot be restored whole (`casbackup verify` lists the backups that need it)"""


class ManifestCorrupt(IntegrityError):
    """manifest of backup {backup} is corrupt: {detail}"""


class ObjectTooLarge(IntegrityError):
    """{key} holds more than {limit} bytes, more than any {what} casbackup writes (damaged, or not casbackup's)"""


class UnsafePath(IntegrityError):
    """refusing unsafe path {path!r} in backup data: {reason}"""


# --- catalog -----------------------------------------------------------------


class CatalogError(CasbackupError):
    """catalog error: {detail}"""

    exit_code = ExitCode.CATALOG


class CommittedUnrecorded(CatalogError):
    """backup {backup} is complete: its manifest is in the repository, but the catalog did not record it ({detail}); `casbackup catalog sync` records it, as the next list, restore, create or gc does"""


class CatalogVersionError(CatalogError):
    """catalog {location} is at schema revision {found}, unknown to this casbackup (knows up to {head}); upgrade casbackup, or rebuild a new catalog from the store with `casbackup catalog rebuild`"""


class CatalogMismatch(CatalogError):
    """catalog {location} indexes repository {catalog_repo}, not {repo}; point `catalog.url` at the right file or run `casbackup catalog rebuild`"""


class CatalogTaken(CatalogError):
    """catalog {location} already indexes repository {catalog_repo}, and a new repository needs a catalog of its own: point `catalog.url` (or CASBACKUP_CATALOG) at a new file (remove that one only if its repository is gone)"""

    # Not CatalogMismatch: its advice, `catalog rebuild`, needs the repository
    # that `init` was refused before writing.


# --- ClickHouse ----------------------------------------------------------------


class ClickHouseError(CasbackupError):
    """ClickHouse error: {detail}"""

    exit_code = ExitCode.CLICKHOUSE_QUERY


class ClickHouseUnavailable(ClickHouseError):
    """cannot reach ClickHouse at {target}: {detail}"""

    exit_code = ExitCode.CLICKHOUSE_CONNECT


class ClickHouseAuthFailed(ClickHouseError):
    """ClickHouse at {target} refused the credentials of user {user!r}"""

    exit_code = ExitCode.CLICKHOUSE_CONNECT


class UnsupportedTable(ClickHouseError):
    """cannot back up {table}: {reason}"""


# --- backups and restores ----------------------------------------------------


class SourceFileUnreadable(CasbackupError):
    """cannot read {path}: {reason}"""

    # Not a ClickHouseError: a backup skips a table that was dropped while it
    # ran, but frozen files stay readable after a DROP, so a read error is the
    # disk's and must fail the run.
    exit_code = ExitCode.SOURCE_FILES


class TargetUnwritable(CasbackupError):
    """cannot write {path}: {reason}"""

    # A restore's own files (staged parts, configs) on the ClickHouse host's
    # disk: full, read-only or refused is the operator's to fix, not a bug.
    exit_code = ExitCode.TARGET_FILES


class BackupNotFound(CasbackupError):
    """no backup named {name!r} in the repository"""

    exit_code = ExitCode.NOT_FOUND


class NoBackups(CasbackupError):
    """the repository holds no committed backup to {action}"""

    # verify --restore of an empty repository said "verify OK": a drill that
    # restores nothing must not pass (like NothingSelected).
    exit_code = ExitCode.NOT_FOUND


class BackupExists(CasbackupError):
    """a backup named {name!r} already exists"""

    exit_code = ExitCode.CONFLICT


class InvalidName(CasbackupError):
    """invalid backup name {name!r}: {reason}"""

    exit_code = ExitCode.USAGE


class NothingSelected(CasbackupError):
    """no tables match {patterns}"""

    exit_code = ExitCode.NOT_FOUND


class RestoreConflict(CasbackupError):
    """{detail}; nothing was changed (use --drop-existing to replace)"""

    exit_code = ExitCode.CONFLICT


class NewerServerBackup(CasbackupError):
    """backup {backup} was made on ClickHouse {made_on}, newer than this server's {version}, which may not read its parts or schema; restore it into ClickHouse {release} or later (or, after rolling an upgrade back, try --allow-older-server); nothing was changed"""

    # ClickHouse upgrades in place but does not downgrade: 18.16 creates a
    # 26.x table (or not: Atomic databases) and then refuses every part.
    exit_code = ExitCode.CONFLICT


class ColumnTypeConflict(CasbackupError):
    """{table} exists with column {column} of type {table_type}, but the backup's parts hold {column} as {backup_type}{more}: ATTACH would read them as the table's type; nothing was changed (use --drop-existing to restore the backup's definition, --as to restore into another database, or --allow-type-change on a ClickHouse release that converts them as after MODIFY COLUMN, e.g. 26.x)"""

    # ATTACH PART does not compare types: 18.16 reads UInt64 parts in a
    # String column as garbage strings, silently. Found while planning, like
    # RestoreConflict, whose advice alone would not say what is wrong.
    exit_code = ExitCode.CONFLICT


class FilesConflict(CasbackupError):
    """{detail}; nothing was changed"""

    # Config and access files of a restore: RestoreConflict's advice
    # (--drop-existing) is about tables.
    exit_code = ExitCode.CONFLICT


class DetachedPartExists(CasbackupError):
    """{path} already exists: `casbackup clean` removes what a killed restore left there; otherwise remove it"""

    # Found before the table's parts are staged, not before the restore began
    # (tables may have been created): so not RestoreConflict's "nothing changed".
    exit_code = ExitCode.CONFLICT


class RestoreFailed(CasbackupError):
    """restore of {table} failed: {detail}"""

    exit_code = ExitCode.CLICKHOUSE_QUERY


class PartDamaged(CasbackupError):
    """restore of {table} refused: part {part} is not what ClickHouse wrote: {detail}; no part of this table was attached"""

    exit_code = ExitCode.INTEGRITY


class LockHeld(CasbackupError):
    """{what} is locked by {holder}; {advice}"""

    exit_code = ExitCode.LOCKED


class LockLost(CasbackupError):
    """lost {what}: {detail}; nothing was committed, run it again"""

    exit_code = ExitCode.LOCKED


class VerifyFailed(CasbackupError):
    """verification failed: {detail}"""

    exit_code = ExitCode.VERIFY_FAILED


class Interrupted(CasbackupError):
    """interrupted by {signal}; partial work was cleaned up"""

    exit_code = ExitCode.INTERRUPTED


class InterruptedLeaving(CasbackupError):
    """interrupted by {signal}; {left}"""

    exit_code = ExitCode.INTERRUPTED


class InterruptedAfterCommit(CasbackupError):
    """interrupted by {signal} after backup {backup} was committed: the backup is complete"""

    exit_code = ExitCode.INTERRUPTED
