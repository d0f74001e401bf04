"""Opening a catalog: engine set-up, SQLite pragmas, schema migrations.

SQLite is the default and gets the treatment it needs for several processes
(a nightly backup, a gc, an operator's `list`) sharing one file: WAL so readers
never block writers, foreign keys on, a busy timeout, and write transactions
that start with BEGIN IMMEDIATE. The last one matters: a deferred transaction
that reads and then writes fails at once with "database is locked" when another
writer committed in between, instead of waiting. pysqlite's own transaction
handling is switched off so that SQLAlchemy's begin/commit are the real ones
(the recipe from SQLAlchemy's SQLite dialect docs).

The schema is versioned with alembic; the migrations live in schema/migrations.
An older catalog is migrated on open; one from a newer casbackup is refused
with what to do about it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)

from casbackup.catalog.models import CatalogMeta
from casbackup.errors import CatalogError, CatalogMismatch, CatalogVersionError, ConfigError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
REPOSITORY_ID_KEY = "repository_id"
# The newest migration in schema/migrations/versions. Opening a catalog that is
# already there needs no alembic at all (importing it costs a quarter second on
# every command); tests/catalog/test_database.py checks this against the scripts.
SCHEMA_HEAD = "0006"


def migrations_dir() -> Path:
    """schema/migrations in a source tree, casbackup/_schema/migrations in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_schema" / "migrations", package.parent / "schema" / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise CatalogError(detail="catalog migrations not found (broken installation)")


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def make_engine(url: str) -> Engine:
    """An engine for the catalog URL; a URL SQLAlchemy cannot use is the operator's to fix (exit 10).

    SQLAlchemy loads the dialect and its driver here, so an unknown scheme
    (NoSuchModuleError), a driver that is not installed (ModuleNotFoundError)
    and a malformed SQLite URL (a four-line ArgumentError) surface now; none
    of their messages is repeated beyond its first line, and the URL only
    with its password hidden.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            detail="invalid catalog URL: not an SQLAlchemy URL such as "
            "sqlite:////var/lib/casbackup/catalog.sqlite or postgresql+psycopg://user@host/db"
        ) from None
    location = parsed.render_as_string(hide_password=True)
    try:
        return _create_engine(parsed)
    except NoSuchModuleError:
        raise ConfigError(
            detail=f"invalid catalog URL {location}: SQLAlchemy knows no database "
            f"{parsed.drivername!r}"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            detail=f"catalog URL {location} needs the Python module {exc.name!r}, "
            "which is not installed (pip install it next to casbackup)"
        ) from None
    except ArgumentError as exc:
        first = _first_line(exc)
        if parsed.password:
            first = first.replace(str(parsed.password), "***")
        raise ConfigError(detail=f"invalid catalog URL: {first}") from None


def _create_engine(parsed: URL) -> Engine:
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(
                detail=f"cannot create directory for {database}: {exc.strerror}"
            ) from None
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _switch_to_wal(cursor)
        # FULL: a committed catalog row survives power loss, so GC never acts
        # on a catalog that forgot a pack it had been told about.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _switch_to_wal(cursor: Any) -> None:
    """WAL mode, retried: on a new file the switch needs exclusive access and
    SQLite reports "database is locked" at once, without its busy handler, when
    several processes open the catalog for the first time together."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class CatalogDatabase:
    """An open, migrated catalog bound to one repository."""

    def __init__(self, engine: Engine, location: str) -> None:
        self.engine = engine
        self.location = location
        self.bound_now = False  # this process gave the catalog its repository
        self.created_file: Path | None = None  # the SQLite file this process created

    @classmethod
    def open(cls, url: str, repository_id: str) -> CatalogDatabase:
        engine = make_engine(url)
        location = redact_url(url)
        file = sqlite_file(engine.url)
        existed = file is None or file.exists()
        try:
            with database_errors(engine, location):
                migrate(engine, location)
                db = cls(engine, location)
                db._bind_repository(repository_id)
                db.created_file = None if existed else file
        except SQLAlchemyError as exc:
            # Not the database's answer (a pool timeout...): still one line.
            engine.dispose()
            raise CatalogError(
                detail=f"{location}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        except BaseException:
            engine.dispose()
            raise
        return db

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that will write: takes SQLite's write lock up front."""
        with self.errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A consistent read-only snapshot that never blocks writers.

        What is read is turned into digests, times and sizes inside the block:
        a value that does not convert (a digest that is no hex, a time that is
        no time, text in a size) was written by no casbackup, since the schema
        checks what it writes, so it is damage to the catalog (exit 17), not a bug.
        """
        with (
            self.errors(),
            self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn,
            conn.begin(),
        ):
            try:
                yield conn
            except (ValueError, TypeError) as exc:
                raise CatalogError(
                    detail=f"{self.location}: a row holds a value casbackup never writes "
                    f"({_first_line(exc)}); {REBUILD_ADVICE}"
                ) from exc

    def errors(self) -> AbstractContextManager[None]:
        """For the few users of the engine that bypass read() and write() (ORM sessions, raw
        DB-API connections): what the database refuses becomes a one-line CatalogError."""
        return database_errors(self.engine, self.location)

    def _bind_repository(self, repository_id: str) -> None:
        """The first repository to use a catalog owns it; any other is refused."""
        with self.write() as conn:
            current = conn.scalar(
                select(CatalogMeta.value).where(CatalogMeta.key == REPOSITORY_ID_KEY)
            )
            if current is None:
                conn.execute(insert(CatalogMeta).values(key=REPOSITORY_ID_KEY, value=repository_id))
                self.bound_now = True
            elif current != repository_id:
                raise CatalogMismatch(
                    location=self.location, catalog_repo=current, repo=repository_id
                )

    def abandon(self) -> None:
        """Undo what ``open`` did for a repository that was never written, and close.

        ``init`` binds the catalog before it writes the repository's config, so
        that a catalog of another repository is refused before the store holds
        anything. When that write then fails, the next ``init`` draws a new id:
        a catalog still bound to the lost one would refuse it for good, and a
        SQLite file named after it (an S3 repository's default) would be left
        behind for nothing.
        """
        if self.bound_now:
            with self.write() as conn:
                conn.execute(delete(CatalogMeta).where(CatalogMeta.key == REPOSITORY_ID_KEY))
            self.bound_now = False
        self.close()
        if self.created_file is not None:
            remove_sqlite_file(self.created_file)


def migrate(engine: Engine, location: str) -> None:
    if _stored_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    known = {rev.revision for rev in script.walk_revisions()}
    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return
        if current is not None and current not in known:
            raise CatalogVersionError(location=location, found=current, head=head)
        if current is None and inspect(conn).get_table_names():
            raise CatalogError(detail=f"{location} holds tables but is not a casbackup catalog")
        if current is not None:
            log.warning("migrating catalog %s from schema %s to %s", location, current, head)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _stored_revision(engine: Engine) -> str | None:
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn, conn.begin():
        if not inspect(conn).has_table("alembic_version"):
            return None
        version = conn.scalar(text("SELECT version_num FROM alembic_version"))
        return None if version is None else str(version)


REBUILD_ADVICE = (
    "if the catalog is damaged, rebuild it from the repository with `casbackup catalog rebuild`"
)
# A lock held past the busy timeout, a connection the server dropped: nothing
# is damaged, and a rebuild would be the wrong thing to suggest.
TRANSIENT_ADVICE = "nothing is damaged: run the command again (another process held the catalog, or its server went away)"
_TRANSIENT_SQLITE = ("database is locked", "database table is locked", "database is busy")
# What SQLite says when it may not create its journal or write the file.
_UNWRITABLE_SQLITE = ("unable to open database file", "attempt to write a readonly database")
# What SQLite says when the disk is full: SQLITE_FULL writing pages, or SQLITE_IOERR when
# it cannot even grow its shared-memory file (what `list` meets first).
_FULL_SQLITE = ("database or disk is full", "disk i/o error")
_NEARLY_FULL_BYTES = 1024 * 1024


def _sqlite_directory(location: str) -> Path | None:
    """The directory of a SQLite catalog file; None for another database or no URL."""
    try:
        path = sqlite_file(location)
    except Exception:  # not a URL (a message's location): no advice of this kind
        return None
    return None if path is None else path.absolute().parent


def _full_directory(location: str) -> Path | None:
    """The directory of a SQLite catalog when its filesystem has (nearly) no space left, else None."""
    directory = _sqlite_directory(location)
    if directory is None:
        return None
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    no_inodes = st.f_files > 0 and st.f_favail == 0
    return directory if no_inodes or st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES else None


def _unwritable_directory(location: str) -> Path | None:
    """The directory of a SQLite catalog when this process may not write there, else None."""
    directory = _sqlite_directory(location)
    if directory is None:
        return None
    return directory if directory.is_dir() and not os.access(directory, os.W_OK) else None


@contextmanager
def database_errors(engine: Engine, location: str, advice: str = REBUILD_ADVICE) -> Iterator[None]:
    """What the catalog's database refuses, as one CatalogError line (exit 17) with advice.

    A truncated or foreign file ("file is not a database"), a dropped table
    ("no such table: chunks"), a server that is gone: SQLAlchemy's text of
    these adds the SQL, its parameters and "(Background on this error at:
    https://sqlalche.me/...)", so only the first line of the DB-API error is
    kept. IntegrityError is left alone: a constraint casbackup broke is a bug
    (and backups.py handles the one it expects). Raw DB-API errors come from
    the chunk index's own connections (index.ChunkIndex.known).
    """
    dbapi = engine.dialect.loaded_dbapi
    try:
        yield
    except (DatabaseError, dbapi.DatabaseError) as exc:
        if isinstance(exc, (IntegrityError, dbapi.IntegrityError)):
            raise
        cause: BaseException = getattr(exc, "orig", None) or exc
        first = _first_line(cause)
        if getattr(exc, "connection_invalidated", False) or first.lower() in _TRANSIENT_SQLITE:
            advice = TRANSIENT_ADVICE
        elif first.lower() in _UNWRITABLE_SQLITE and (directory := _unwritable_directory(location)):
            # A read-only mount of the repository, say: nothing is damaged, and a
            # rebuild in place would fail the same way.
            advice = (
                f"{directory} cannot be written (a read-only repository?); point "
                "CASBACKUP_CATALOG or [catalog] url at a writable file and run "
                "`casbackup catalog rebuild`"
            )
        elif first.lower() in _FULL_SQLITE and (directory := _full_directory(location)):
            # A rebuild would need the space too, and SQLite rolled the write back.
            advice = (
                f"no space left in {directory}: free some there and run the command again "
                "(nothing is damaged)"
            )
        # ``cause`` without the advice: for a caller whose own advice differs
        # (a committed backup's record is the next sync's, not a second run's).
        raise CatalogError(
            detail=f"{location}: {first}; {advice}", cause=f"{location}: {first}"
        ) from exc


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite catalog; None for other databases and for one in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def remove_sqlite_file(path: Path) -> None:
    """A SQLite database file and the journal files SQLite keeps beside it, if there."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def redact_url(url: str) -> str:
    """A catalog URL fit for messages: the password replaced."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid catalog URL>"
