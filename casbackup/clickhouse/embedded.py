"""The embedded adapter: chdb, the ClickHouse engine in-process on a data directory.

The only module that imports chdb. chdb runs one engine per process and locks
its data directory against other processes (the same guard a ClickHouse
server has), so the demo and the tests that use it run casbackup in the
process that owns the engine. Several sessions on the same path in one
process share that engine, and closing one leaves the others working; they
may query at the same time from different threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from casbackup.clickhouse.client import Row, first_line
from casbackup.errors import ClickHouseError, ClickHouseUnavailable, ConfigError


def _import_chdb_session() -> ModuleType:
    """``chdb.session``, imported without pyarrow.

    ``chdb.session`` imports pyarrow when it is installed (chdb-core requires
    it; the import is in ``chdb.state.sqlitelike``), for the Arrow result
    formats; pyarrow imports numpy, whose OpenBLAS also starts a spinning
    worker thread per core. None of it is used here: we ask for JSON and
    TabSeparated. It was ~0.1 s of the ~0.28 s chdb import, paid by every
    command on chdb. chdb treats pyarrow as optional (its Arrow-only calls
    raise ImportError without it, for the rest of the process), so the import
    is hidden for the time chdb takes to load: only on chdb's first load, and
    only if nothing in this process had imported pyarrow already. Afterwards
    ``import pyarrow`` works again for anyone else.
    """
    hidden = "pyarrow" not in sys.modules and "chdb.session" not in sys.modules
    if hidden:
        sys.modules["pyarrow"] = None  # type: ignore[assignment]  # makes `import pyarrow` fail
    try:
        from chdb import session
    finally:
        if hidden and "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
            del sys.modules["pyarrow"]
    return session


# Whether this process has started chdb's engine: later sessions join it (clone,
# from other threads) and have nothing to say at start.
_engine_started = False


def _note_engine_started() -> None:
    global _engine_started
    _engine_started = True


@contextlib.contextmanager
def _engine_stderr_withheld() -> Iterator[None]:
    """Keep the engine's own start-up messages off the operator's stderr.

    chdb's C++ side writes to file descriptor 2 directly when it cannot start
    (``Code: 76 ... Cannot lock file``) before raising; casbackup reports the
    failure itself, in one line. Only the process's first session runs
    inside, when no other thread of casbackup writes yet.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class EmbeddedClient:
    def __init__(self, path: str, config_file: str = "") -> None:
        try:
            session = _import_chdb_session()
        except ImportError:
            raise ClickHouseUnavailable(
                target=f"chdb://{path}",
                detail="chdb is not installed (pip install 'casbackup[chdb]')",
            ) from None
        self.path = path
        self.config_file = config_file
        # Held by a running query; close() waits for it, as closing a session
        # under a query in another thread is not something chdb guards against.
        self._lock = threading.Lock()
        if config_file and not Path(config_file).is_file():
            raise ConfigError(detail=f"{self.describe()}: no config file {config_file}")
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            # chdb takes a server config through the session path (CLICKHOUSE.md).
            with _engine_stderr_withheld() if not _engine_started else contextlib.nullcontext():
                self._session = session.Session(
                    f"{path}?config-file={config_file}" if config_file else path
                )
            _note_engine_started()
        except OSError as exc:
            raise ClickHouseUnavailable(
                target=self.describe(), detail=exc.strerror or str(exc)
            ) from None
        except RuntimeError as exc:
            detail = first_line(str(exc))
            if "EmbeddedServer" in detail:
                detail = "cannot start the embedded engine here (is another process using this data directory?)"
            raise ClickHouseUnavailable(target=self.describe(), detail=detail) from None

    def describe(self) -> str:
        return f"chdb://{self.path}" + (f"?config={self.config_file}" if self.config_file else "")

    def clone(self) -> EmbeddedClient:
        """A second session on the same engine, for a query in another thread.

        chdb releases the GIL while a query runs and sessions on one path share
        the engine, so a fingerprint scan can run beside the store.
        """
        return EmbeddedClient(self.path, self.config_file)

    def query(self, sql: str) -> list[Row]:
        text = self._run(sql, "JSON")
        if not text.strip():
            return []
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ClickHouseError(detail=f"unparseable result from chdb: {exc}") from None
        return list(document.get("data", []))

    def execute(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        # chdb takes no per-query settings for DDL; SET lasts for the session,
        # which in this process belongs to casbackup alone.
        for name, value in (settings or {}).items():
            self._run(
                f"SET {name} = {int(value) if isinstance(value, bool) else value}", "TabSeparated"
            )
        self._run(sql, "TabSeparated")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _run(self, sql: str, fmt: str) -> str:
        try:
            with self._lock:
                result = self._session.query(sql, fmt)
        except RuntimeError as exc:
            raise ClickHouseError(detail=first_line(str(exc))) from None
        return result.bytes().decode() if hasattr(result, "bytes") else str(result)
