"""An object store in a local directory (also NFS or any mounted filesystem).

Objects are files under the root, one per key; ``packs/ab/abcd...`` becomes
``<root>/packs/ab/abcd...``. A put writes a hidden temporary file next to its
target, fsyncs it, renames it over the target and fsyncs the directory, so a
crash leaves either the old state or the new one, plus at worst a ``.tmp-*``
file that ``remove_stale_temporaries`` (run by ``casbackup clean``) deletes.
Objects of 1 MiB or more (packs, large manifests) are written past the page
cache (``direct_io``), unless the filesystem refuses direct I/O, which is
then remembered for the store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from casbackup.errors import (
    NotAnObject,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreFull,
    StorePermissionDenied,
)
from casbackup.store.base import ObjectInfo, validate_key, validate_prefix, validate_range
from casbackup.store.direct_io import (
    MIN_DIRECT_SIZE,
    DirectIOUnsupported,
    Pieces,
    direct_io_available,
    write_all,
    write_new_file_direct,
)

TEMP_PREFIX = ".tmp-"


class LocalStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.direct_writes = direct_io_available()  # cleared if the filesystem refuses them

    def describe(self) -> str:
        return str(self.root)

    # --- writing -------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.put_pieces(key, [data])

    def put_pieces(self, key: str, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """``put`` of the pieces' concatenation, written piece by piece (a pack is never joined)."""
        path = self._path(key)
        temp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            self._make_dirs(path.parent)
            self._write_temp(temp, Pieces(pieces))
            os.rename(temp, path)
            _fsync_directory(path.parent)
        except OSError as exc:
            _unlink_quietly(temp)
            raise self._translate(exc, key) from exc

    def create(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Atomic create-if-absent: link(2) of a complete temporary file fails if the key exists."""
        path = self._path(key)
        temp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            self._make_dirs(path.parent)
            self._write_temp(temp, Pieces([data]))
            try:
                os.link(temp, path)
            except FileExistsError:
                raise ObjectExists(key=key) from None
            finally:
                _unlink_quietly(temp)
            _fsync_directory(path.parent)
        except OSError as exc:
            _unlink_quietly(temp)
            raise self._translate(exc, key) from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._translate(exc, key) from exc
        _fsync_directory(path.parent)

    # --- reading -------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_range(offset, length)
        path = self._path(key)
        try:
            # O_NONBLOCK: opening a FIFO at the key would otherwise wait for a writer, for ever.
            with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise NotAnObject(key=key, location=str(self.root), kind=_kind(mode))
                if offset:
                    handle.seek(offset)
                if length is None:
                    return handle.read()
                # read(n) allocates n bytes before it reads: a bound far above
                # the object (get_at_most's) must cost what the object holds.
                present = max(0, os.fstat(handle.fileno()).st_size - offset)
                return handle.read(min(length, present))
        except FileNotFoundError:
            raise ObjectNotFound(key=key) from None
        except OSError as exc:
            raise self._translate(exc, key) from exc

    def prefetch(self, key: str, offset: int, length: int) -> None:
        """Start reading a range into the page cache (``POSIX_FADV_WILLNEED``), without waiting.

        Only a hint: a missing or unreadable object is left for ``get`` to
        report. What it saves a restore is in docs/design.md ("Restore").
        """
        path = self._path(key)
        try:
            # O_NONBLOCK: a FIFO at the key would wait for a writer, for ever (as in get).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFound(key=key) from None
        except OSError as exc:
            raise self._translate(exc, key) from exc
        if stat.S_ISDIR(st.st_mode):
            raise NotAnObject(key=key, location=str(self.root), kind=_kind(st.st_mode))
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key=key)
        return ObjectInfo(key=key, size=st.st_size, version=_version(st))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix fully names.
        directory, _, _ = prefix.rpartition("/")
        start = self.root / directory if directory else self.root
        found: list[ObjectInfo] = []
        try:
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                base = Path(dirpath).relative_to(self.root)
                for name in filenames:
                    if name.startswith("."):
                        continue
                    key = name if base == Path(".") else f"{base.as_posix()}/{name}"
                    if not key.startswith(prefix):
                        continue
                    try:
                        validate_key(key)
                        st = os.stat(os.path.join(dirpath, name))
                    except (FileNotFoundError, StoreError):
                        continue  # deleted under us, or a stranger's file: not an object
                    if not stat.S_ISREG(st.st_mode):
                        continue  # a FIFO, a device, a socket: no object either
                    found.append(ObjectInfo(key=key, size=st.st_size, version=_version(st)))
        except OSError as exc:
            raise self._translate(exc, prefix) from exc
        found.sort(key=lambda info: info.key)
        yield from found

    # --- maintenance -----------------------------------------------------------

    def remove_stale_temporaries(
        self, older_than_seconds: float, *, under: tuple[str, ...] = ("",), dry_run: bool = False
    ) -> int:
        """Delete temporary files left by puts that were killed (or count them), returning how many.

        Every directory is looked at, whatever ``under`` says: the temporary
        names carry this store's own prefix, which no other tool writes.
        """
        removed = 0
        cutoff = time.time() - older_than_seconds
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        if not dry_run:
                            os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    # --- helpers ---------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write_temp(self, temp: Path, data: Pieces) -> None:
        if self.direct_writes and data.size >= MIN_DIRECT_SIZE:
            try:
                write_new_file_direct(temp, data)
                return
            except DirectIOUnsupported:
                self.direct_writes = False
                _unlink_quietly(temp)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            for view in data.slices(0, data.size):
                write_all(fd, view)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for created in reversed(missing):
            try:
                created.mkdir(mode=0o755)
            except FileExistsError:
                continue
            _fsync_directory(created.parent)

    def _translate(self, exc: OSError, key: str) -> StoreError:
        if exc.errno == errno.EISDIR:  # a rename over it
            return NotAnObject(key=key, location=str(self.root), kind="a directory")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(key=key, detail=f"{self.root}: {exc.strerror}")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorePermissionDenied(key=key, detail=f"{self.root}: {exc.strerror}")
        return StoreError(detail=f"{self.root}/{key}: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    """What a non-regular file at a key is, for the message that names it."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _version(st: os.stat_result) -> str:
    """When the file's bytes were written: a key written again is a new temporary file.

    Not the inode: network and FUSE filesystems (CIFS with noserverino,
    sshfs) number inodes anew per mount or lookup, and every command would
    take every manifest for replaced. Copies that keep times (cp -a,
    rsync -a) keep it too.
    """
    return str(st.st_mtime_ns)
