from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from casbackup.errors import ExitCode, NotAnObject, StoreFull, StorePermissionDenied
from casbackup.store.local import TEMP_PREFIX, LocalStore
from tests.helpers import unwritable
from tests.store.conformance import StoreConformance


class TestLocalStoreConformance(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "repo")


def test_put_leaves_no_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b/c", b"data")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c"]


def test_list_ignores_temporaries_and_foreign_names(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("packs/aa/x", b"1")
    (tmp_path / "packs" / "aa" / f"{TEMP_PREFIX}x.123").write_bytes(b"partial")
    (tmp_path / "packs" / "aa" / "with space").write_bytes(b"?")
    (tmp_path / "catalog.sqlite-wal").write_bytes(b"")  # a key-shaped stranger is still listed
    assert [i.key for i in store.list("packs/")] == ["packs/aa/x"]


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("packs/aa/x", b"1")
    old = tmp_path / "packs" / "aa" / f"{TEMP_PREFIX}x.old"
    new = tmp_path / "packs" / "aa" / f"{TEMP_PREFIX}x.new"
    old.write_bytes(b"killed mid-put")
    new.write_bytes(b"in progress")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert store.remove_stale_temporaries(older_than_seconds=3600) == 1
    assert not old.exists() and new.exists()
    assert store.get("packs/aa/x") == b"1"


def test_disk_full_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    real_write = os.write

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreFull) as caught:
        store.put("packs/aa/x", b"1" * 100)
    monkeypatch.setattr(os, "write", real_write)
    assert "no space left" in caught.value.message
    assert list(tmp_path.rglob("*x*")) == []


def test_unwritable_directory_is_permission_error(tmp_path: Path) -> None:
    """Root ignores mode bits, so as root the directory is made immutable instead."""
    store = LocalStore(tmp_path)
    store.put("packs/aa/x", b"1")
    with unwritable(tmp_path / "packs" / "aa"):
        with pytest.raises(StorePermissionDenied) as caught:
            store.put("packs/aa/y", b"2")
        assert "permission denied" in caught.value.message
        with pytest.raises(StorePermissionDenied):
            store.delete("packs/aa/x")
    assert store.get("packs/aa/x") == b"1"


def test_read_only_filesystem_is_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)

    def rofs(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", rofs)
    with pytest.raises(StorePermissionDenied):
        store.put("x", b"1")


def test_a_directory_at_a_key_is_named_not_absent(tmp_path: Path) -> None:
    """A key holds an object or nothing; a directory there is damage, named up front."""
    store = LocalStore(tmp_path)
    (tmp_path / "manifests" / "b5").mkdir(parents=True)
    for operation in (
        lambda: store.stat("manifests/b5"),
        lambda: store.get("manifests/b5"),
        lambda: store.get("manifests/b5", 0, 10),
        lambda: store.put("manifests/b5", b"x"),
    ):
        with pytest.raises(NotAnObject, match=r"manifests/b5 in the store at .* is a directory"):
            operation()
    assert NotAnObject.exit_code == ExitCode.INTEGRITY
    assert [i.key for i in store.list("manifests/")] == []


def test_a_fifo_at_a_key_is_named_and_never_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO blocks until something writes to it: every command hung on one."""
    store = LocalStore(tmp_path)
    store.put("packs/aa/x", b"1")
    (tmp_path / "locks").mkdir()
    os.mkfifo(tmp_path / "config")
    os.mkfifo(tmp_path / "locks" / "backup-abc")
    os.symlink("/dev/zero", tmp_path / "packs" / "aa" / "y")
    for key in ("config", "locks/backup-abc", "packs/aa/y"):
        for length in (None, 10):
            with pytest.raises(NotAnObject, match=rf"{key} in the store at .* is a (FIFO|device)"):
                store.get(key, 0, length)
    assert [i.key for i in store.list("")] == ["packs/aa/x"]


def test_a_fifo_at_a_pack_key_is_never_waited_on_by_prefetch(tmp_path: Path) -> None:
    """Restore hints every pack read ahead of it: open(2) of a FIFO there hung it for ever."""
    import threading

    store = LocalStore(tmp_path)
    (tmp_path / "packs" / "aa").mkdir(parents=True)
    fifo = tmp_path / "packs" / "aa" / "y"
    os.mkfifo(fifo)
    hint = threading.Thread(target=store.prefetch, args=("packs/aa/y", 0, 10), daemon=True)
    hint.start()
    hint.join(5)
    if hint.is_alive():  # let it go: a writer's open ends the wait
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not hint.is_alive()
    with pytest.raises(NotAnObject, match="is a FIFO"):
        store.get("packs/aa/y", 0, 10)
