"""OSErrors of the files a run reads or writes on the ClickHouse host, named and classed.

A backup reads frozen part files and a restore writes staged parts and
configs, mostly through descriptor calls (``pread``, ``pwrite``,
``fallocate``) whose errors name no file. A full, read-only or failing disk
is the operator's to fix, so it ends as one line that names the file, with
its own exit code: reading as ``SourceFileUnreadable`` (exit 20), writing as
``TargetUnwritable`` (exit 21). Only that file's own calls go inside; an
error of the store, the index or a corrupt chunk keeps its own type.

The process's own limits (open descriptors, memory) are not the file's: they
pass through and end as an internal error, which is what they are.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from casbackup.errors import SourceFileUnreadable, TargetUnwritable

PROCESS_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


@contextlib.contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Calls that read ``path`` (a frozen file being backed up)."""
    with _naming(path, SourceFileUnreadable):
        yield


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Calls that write ``path`` (a restored file or directory)."""
    with _naming(path, TargetUnwritable):
        yield


@contextlib.contextmanager
def _naming(
    path: Path | str, error: type[SourceFileUnreadable] | type[TargetUnwritable]
) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in PROCESS_LIMITS:
            raise
        reason = exc.strerror or str(exc)
        if error is SourceFileUnreadable and exc.errno in (errno.EACCES, errno.EPERM):
            reason += " (run casbackup as root or as the user ClickHouse runs as)"
        raise error(path=str(path), reason=reason) from exc
