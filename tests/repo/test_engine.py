"""The storage engine end to end, without ClickHouse: store, dedupe, read back, corruption."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casbackup import interrupts
from casbackup.catalog import Catalog
from casbackup.catalog.backups import BackupRecords, out_of_step
from casbackup.errors import (
    ChunkCorrupt,
    CommittedUnrecorded,
    ExitCode,
    IntegrityError,
    InterruptedAfterCommit,
    PackCorrupt,
    PackMissing,
    SourceFileUnreadable,
    StoreError,
    TargetUnwritable,
)
from casbackup.repo import keys, reader
from casbackup.repo.compression import Compression
from casbackup.repo.repository import Repository
from casbackup.repo.writer import ChunkWriter
from casbackup.snapshot import SnapshotWriter
from tests.helpers import restore_manifest, snapshot_directory, tree_contents, write_tree


def make_tree(root: Path, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for part in range(3):
        files[f"2024{part:02d}_1_1_0/count.txt"] = str(rng.randint(1, 10**6)).encode()
        files[f"2024{part:02d}_1_1_0/columns.txt"] = b"columns format version: 1\n2 columns:\n"
        files[f"2024{part:02d}_1_1_0/checksums.txt"] = rng.randbytes(300)
        files[f"2024{part:02d}_1_1_0/value.bin"] = rng.randbytes(rng.randint(1, 3_000_000))
        files[f"2024{part:02d}_1_1_0/text.bin"] = b"".join(
            b"event %d user %d\n" % (i, rng.randint(0, 999)) for i in range(rng.randint(0, 80_000))
        )
        files[f"2024{part:02d}_1_1_0/empty.bin"] = b""
        files[f"2024{part:02d}_1_1_0/p1.proj/data.bin"] = rng.randbytes(5000)
    write_tree(root, files)
    return files


def test_roundtrip_is_exact(repo: Repository, catalog: Catalog, tmp_path: Path) -> None:
    expected = make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out")
    assert tree_contents(tmp_path / "out") == expected
    assert manifest.stats.logical_bytes == sum(map(len, expected.values()))
    assert manifest.stats.new_bytes == sum(i.size for i in repo.store.list("packs/"))


def test_more_files_than_may_be_open_at_once(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files go out in groups of MAX_OPEN_FILES; a chunk shared across groups reaches every file."""
    monkeypatch.setattr(reader, "MAX_OPEN_FILES", 7)
    rng = random.Random(5)
    shared = rng.randbytes(300_000)
    expected = {
        f"all_1_1_0/c{i}.bin": shared if i % 3 else rng.randbytes(i * 10) for i in range(30)
    }
    write_tree(tmp_path / "src", expected)
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    out = tmp_path / "out"
    live: set[int] = set()
    most = 0
    real_open, real_close = os.open, os.close

    def tracking_open(path: str | Path, flags: int, mode: int = 0o777) -> int:
        nonlocal most
        fd = real_open(path, flags, mode)
        if Path(path).is_relative_to(out):
            live.add(fd)
            most = max(most, len(live))
        return fd

    def tracking_close(fd: int) -> None:
        live.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "close", tracking_close)
    assert restore_manifest(repo, catalog, repo.read_manifest("b1"), out) == expected
    assert most == 7 and not live


def test_second_snapshot_stores_nothing_new(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    packs_before = {i.key for i in repo.store.list("packs/")}
    second = snapshot_directory(repo, catalog, "b2", tmp_path / "src")
    assert second.stats.new_bytes == 0 and second.stats.new_chunks == 0
    assert {i.key for i in repo.store.list("packs/")} == packs_before


def test_identical_small_files_are_packed_not_one_object_each(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    write_tree(tmp_path / "src", {f"p{i}/count.txt": str(i).encode() for i in range(500)})
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    assert len(list(repo.store.list("packs/"))) == 1


def test_insert_in_big_file_stores_little(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    rng = random.Random(5)
    big = rng.randbytes(40 << 20)
    write_tree(tmp_path / "v1", {"p/data.bin": big})
    write_tree(tmp_path / "v2", {"p/data.bin": big[: 20 << 20] + b"inserted" + big[20 << 20 :]})
    first = snapshot_directory(repo, catalog, "b1", tmp_path / "v1")
    second = snapshot_directory(repo, catalog, "b2", tmp_path / "v2")
    assert first.stats.new_bytes > 40 << 20
    assert second.stats.new_bytes < 8 << 20  # the chunks around the edit, not 40 MiB


def _first_pack(repo: Repository) -> str:
    return next(iter(repo.store.list("packs/"))).key


def test_flipped_byte_in_pack_is_chunk_corrupt(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    """A flipped bit in a chunk's bytes fails the restore, whichever chunk is first in a pack.

    The bit is flipped in a chunk stored raw: a few bits of a zstd frame's
    header (its last-block flag, its dictionary-id flag) change nothing that
    decompresses, so the restored bytes are still the right ones. Flipping
    byte 20 of whichever pack is listed first hit such a bit in one full
    test run: which chunks share a pack, in which order, depends on threads.
    """
    make_tree(tmp_path / "src")
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    key, entry = next(
        (info.key, entry)
        for info in repo.store.list("packs/")
        for entry in repo.read_trailer(keys.pack_id_from_key(info.key))
        if entry.compression == Compression.NONE and entry.length > 1
    )
    path = Path(repo.store.describe()) / key
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChunkCorrupt, match="BLAKE3 digest mismatch"):
        restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out")


def test_truncated_pack_is_pack_corrupt(repo: Repository, catalog: Catalog, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    path = Path(repo.store.describe()) / _first_pack(repo)
    size = path.stat().st_size
    os.truncate(path, size // 3)
    with pytest.raises(PackCorrupt, match="truncated"):
        restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out")
    with pytest.raises(PackCorrupt):
        repo.read_trailer(keys.pack_id_from_key(_first_pack(repo)))


def test_missing_pack_is_pack_missing(repo: Repository, catalog: Catalog, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    repo.store.delete(_first_pack(repo))
    with pytest.raises(PackMissing):
        restore_manifest(repo, catalog, repo.read_manifest("b1"), tmp_path / "out")


def test_catalog_pointing_at_wrong_offset_is_detected(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    with catalog.db.write() as conn:
        conn.exec_driver_sql('UPDATE chunks SET "offset" = "offset" + 1')
    with pytest.raises((ChunkCorrupt, PackCorrupt)):
        restore_manifest(repo, catalog, manifest, tmp_path / "out")


def test_restore_never_overwrites_existing_files(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    victim = tmp_path / "out" / "202400_1_1_0" / "count.txt"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"precious")
    with pytest.raises(TargetUnwritable, match=f"cannot write {victim}: File exists"):
        restore_manifest(repo, catalog, manifest, tmp_path / "out")
    assert victim.read_bytes() == b"precious"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), where a restore runs out of space for real."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_and_found_before_any_data_is_copied(
    repo: Repository,
    catalog: Catalog,
    tmp_path: Path,
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every file's blocks are allocated before the fetch: the disk runs out there, not mid-copy."""
    expected = make_tree(tmp_path / "src")
    assert sum(map(len, expected.values())) > 2 * 1024 * 1024
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    copies: list[int] = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(
        os, "pwrite", lambda fd, data, at: copies.append(fd) or real_pwrite(fd, data, at)
    )
    with pytest.raises(TargetUnwritable) as raised:
        restore_manifest(repo, catalog, manifest, small_disk / "out")
    assert copies == []
    assert raised.value.exit_code == ExitCode.TARGET_FILES
    assert raised.value.message.startswith(f"cannot write {small_disk}/out/")
    assert raised.value.message.endswith(": No space left on device")


def test_a_refused_preallocation_stops_before_any_copy(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same as on the small disk, wherever this runs: fallocate says ENOSPC."""
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")

    def no_space(fd: int, mode: int, offset: int, length: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(reader, "_libc_fallocate", lambda: no_space)
    copies: list[int] = []
    real_pwrite = os.pwrite
    monkeypatch.setattr(
        os, "pwrite", lambda fd, data, at: copies.append(fd) or real_pwrite(fd, data, at)
    )
    with pytest.raises(TargetUnwritable, match="No space left on device") as raised:
        restore_manifest(repo, catalog, manifest, tmp_path / "out")
    assert copies == [] and raised.value.exit_code == ExitCode.TARGET_FILES


def test_a_failing_close_is_the_files_error_and_every_file_is_closed(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS can report a full disk only when the file is closed."""
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    out = tmp_path / "out"
    real_close = os.close
    refused: list[str] = []

    def closing(fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        real_close(fd)
        if path.startswith(str(out)) and path.endswith("value.bin"):
            refused.append(path)
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

    open_before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "close", closing)
    with pytest.raises(TargetUnwritable, match="Disk quota exceeded") as raised:
        restore_manifest(repo, catalog, manifest, out)
    monkeypatch.undo()
    assert len(refused) == 3, "every file was closed, also after the first refusal"
    assert raised.value.message == f"cannot write {refused[0]}: Disk quota exceeded"
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_an_unwritable_directory_is_named(
    repo: Repository, catalog: Catalog, tmp_path: Path
) -> None:
    """Root ignores mode bits, so as root the directory is made immutable instead."""
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(out)]).returncode != 0:
            pytest.skip("chattr +i is not available here")
    else:
        out.chmod(0o500)
    try:
        with pytest.raises(TargetUnwritable, match=f"cannot write {out}/"):
            restore_manifest(repo, catalog, manifest, out)
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(out)], check=False)
        else:
            out.chmod(0o700)
    assert list(out.iterdir()) == []


def test_unindexed_chunk_is_integrity_error(
    repo: Repository, catalog: Catalog, catalog_url: str, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    manifest = snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    with sqlite3.connect(
        catalog_url.removeprefix("sqlite:///")
    ) as raw:  # foreign keys off by default
        raw.execute("DELETE FROM chunks")
    with pytest.raises(IntegrityError, match="not in the index"):
        restore_manifest(repo, catalog, manifest, tmp_path / "out")


@pytest.mark.parametrize("pack_state", ["forgotten", "condemned"])
def test_commit_checks_every_chunk_is_still_indexed(
    repo: Repository,
    catalog: Catalog,
    catalog_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pack_state: str,
) -> None:
    """A pack gc forgot while the backup ran stops the commit; one it condemned does not.

    The second backup stores nothing new: every chunk is b1's. Just before it
    commits, gc (here: SQL) either forgets a pack and its chunk rows or only
    condemns it; a condemned pack's chunks are resurrected by the next gc.
    """
    make_tree(tmp_path / "src")
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    commit = SnapshotWriter.commit

    def gc_meanwhile(self: SnapshotWriter, *args: Any, **kwargs: Any) -> Any:
        with sqlite3.connect(catalog_url.removeprefix("sqlite:///")) as raw:
            pack = "(SELECT min(id) FROM packs)"
            if pack_state == "forgotten":
                raw.execute(f"DELETE FROM chunks WHERE pack_id = {pack}")
            else:
                raw.execute(f"UPDATE packs SET state = 'condemned' WHERE id = {pack}")
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(SnapshotWriter, "commit", gc_meanwhile)
    if pack_state == "forgotten":
        with pytest.raises(IntegrityError, match=r"references .* chunks the index no longer holds"):
            snapshot_directory(repo, catalog, "b2", tmp_path / "src")
        assert set(repo.list_backups()) == {"b1"}
    else:
        snapshot_directory(repo, catalog, "b2", tmp_path / "src")
        assert set(repo.list_backups()) == {"b1", "b2"}


@pytest.mark.parametrize("kind", ["vanished", "a directory"])
def test_unreadable_file_is_named_and_nothing_is_committed(
    repo: Repository, catalog: Catalog, tmp_path: Path, kind: str
) -> None:
    """A read error is the file's (exit code 20), not an internal error."""
    make_tree(tmp_path / "src")
    paths = sorted(p for p in (tmp_path / "src").rglob("*") if p.is_file())
    bad = tmp_path / "src" / "202400_1_1_0" / "gone.bin"
    if kind == "a directory":
        bad.mkdir()
    with (
        SnapshotWriter(repo, catalog, "b1") as snap,
        pytest.raises(SourceFileUnreadable) as raised,
    ):
        list(snap.archiver.store_files([*paths, bad]))
    assert raised.value.exit_code == ExitCode.SOURCE_FILES
    assert raised.value.message.startswith(f"cannot read {bad}: ")


def test_a_manifest_committed_meanwhile_is_never_overwritten(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts (two catalogs) committing one name: the check before the write cannot see the
    other's manifest appear; the write itself must refuse (exit 14), not replace it."""
    from casbackup.errors import BackupExists

    for name in ("b1", "b2"):
        write_tree(tmp_path / name / "all_1_1_0", {"data.bin": name.encode() * 1000})
        snapshot_directory(repo, catalog, name, tmp_path / name)
    theirs = repo.read_manifest("b2")
    ours = repo.read_manifest("b1").model_copy(update={"name": "b2"})
    monkeypatch.setattr(repo, "has_manifest", lambda name: False)  # theirs landed after the check
    with pytest.raises(BackupExists):
        repo.write_manifest(ours)
    assert repo.read_manifest("b2") == theirs


def test_a_second_signal_while_a_committed_backup_shuts_down_still_says_it_is_complete(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during the commit waits for it; a second one (Ctrl-C twice, say) may then
    arrive while the writers close and the lease is released. That second signal left as a
    bare SignalReceived ("interrupted ...; partial work was cleaned up") of a backup whose
    manifest was in the store, where one signal says "the backup is complete"."""
    write_tree(tmp_path / "src", {"all_1_1_0/data.bin": b"x" * 1000})
    real_mark = BackupRecords.mark_committed
    real_close = ChunkWriter.close
    signals = []

    def mark_and_signal(self: BackupRecords, *args: Any, **kwargs: Any) -> None:
        real_mark(self, *args, **kwargs)
        signals.append("first")
        os.kill(os.getpid(), signal.SIGTERM)  # held by interrupts.deferred()

    def close_and_signal(self: ChunkWriter) -> None:
        if signals == ["first"]:
            signals.append("second")
            os.kill(os.getpid(), signal.SIGINT)  # no longer held: raised right here
        real_close(self)

    monkeypatch.setattr(BackupRecords, "mark_committed", mark_and_signal)
    monkeypatch.setattr(ChunkWriter, "close", close_and_signal)
    undo = interrupts.install()
    try:
        with pytest.raises(InterruptedAfterCommit, match="the backup is complete"):
            snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    finally:
        undo()
    assert signals == ["first", "second"]
    assert repo.has_manifest("b1")
    assert catalog.backups.committed_names() == {"b1"}
    assert not list(repo.store.list(keys.LOCKS_PREFIX))  # the lease was released all the same


def test_a_catalog_locked_at_the_commit_never_says_to_run_the_backup_again(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog held past the busy timeout when the committed backup is recorded: the error
    said "backup b1 is complete ... (catalog error: ...: database is locked; nothing is
    damaged: run the command again ...)", and the command again (`create b1`) only fails:
    b1 exists. Its record is the next sync's, as the rest of the message says."""
    from casbackup.catalog import database

    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 50)
    write_tree(tmp_path / "src", {"all_1_1_0/data.bin": b"x" * 1000})
    path = tmp_path / "locked.sqlite"
    real_mark = BackupRecords.mark_committed

    def mark_while_locked(self: BackupRecords, *args: Any, **kwargs: Any) -> None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process's long write
        try:
            real_mark(self, *args, **kwargs)
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    monkeypatch.setattr(BackupRecords, "mark_committed", mark_while_locked)
    with (
        Catalog.open(f"sqlite:///{path}", repo.id) as catalog,
        pytest.raises(CommittedUnrecorded) as caught,
    ):
        snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    message = caught.value.message
    assert message.startswith("backup b1 is complete") and "database is locked" in message
    assert "run the command again" not in message
    assert "`casbackup catalog sync` records it" in message
    assert repo.has_manifest("b1")  # what `create b1` again would refuse (BackupExists)


def test_a_committed_backup_releases_its_lease_whatever_fails_after_the_manifest(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the manifest the run counts as finished, so leaving commit() skips abort(). An
    error other than a CatalogError there (SQLAlchemy's InterfaceError of a connection a
    PostgreSQL server closed is not a DatabaseError, so no CatalogError) left the lease in
    the store, beating until the process exited, and the writers' pools open."""
    from sqlalchemy.exc import InterfaceError

    write_tree(tmp_path / "src", {"all_1_1_0/data.bin": b"x" * 1000})
    closed: list[bool] = []
    real_close = ChunkWriter.close

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise InterfaceError("UPDATE backups", {}, Exception("the connection is closed"))

    def close(self: ChunkWriter) -> None:
        closed.append(True)
        real_close(self)

    monkeypatch.setattr(BackupRecords, "mark_committed", refuse)
    monkeypatch.setattr(ChunkWriter, "close", close)
    with pytest.raises(InterfaceError):
        snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    assert repo.has_manifest("b1")
    assert not list(repo.store.list(keys.LOCKS_PREFIX))
    assert closed


def test_a_failed_listing_after_the_commit_records_the_size_and_keeps_the_backup(
    repo: Repository, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's version is listed after its catalog row, signals no longer held: a store
    that fails that listing costs only the version check for this backup, never the backup."""
    write_tree(tmp_path / "src", {"all_1_1_0/data.bin": b"x" * 1000})

    def unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError(detail="LIST manifests/b1: SlowDown")

    monkeypatch.setattr(Repository, "manifest_stamp", unavailable)
    snapshot_directory(repo, catalog, "b1", tmp_path / "src")
    recorded = catalog.backups.committed_stamps()["b1"]
    assert recorded.version is None
    monkeypatch.undo()
    assert recorded.size == repo.list_backups()["b1"].size
    assert not out_of_step(catalog.backups.committed_stamps(), repo.list_backups())
