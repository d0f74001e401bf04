"""Large objects are written past the page cache; every way that can go wrong falls back or fails cleanly."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import casbackup.store.direct_io as direct_io
from casbackup.errors import StoreFull
from casbackup.store.direct_io import ALIGNMENT, MIN_DIRECT_SIZE, STAGING_SIZE
from casbackup.store.local import LocalStore


@pytest.fixture(autouse=True)
def direct_io_here(tmp_path: Path) -> None:
    """Skip where the test directory's filesystem refuses O_DIRECT (tmpfs before Linux 6.6)."""
    if not direct_io.direct_io_available():
        pytest.skip("no O_DIRECT on this platform")
    probe = tmp_path / "probe"
    try:
        direct_io.write_new_file_direct(probe, direct_io.Pieces([bytes(ALIGNMENT)]))
    except direct_io.DirectIOUnsupported:
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    finally:
        probe.unlink(missing_ok=True)


sizes = st.one_of(
    st.sampled_from(
        [
            MIN_DIRECT_SIZE,
            MIN_DIRECT_SIZE + 1,
            MIN_DIRECT_SIZE + ALIGNMENT - 1,
            MIN_DIRECT_SIZE + ALIGNMENT,
            4 * MIN_DIRECT_SIZE + 17,
            STAGING_SIZE,
            STAGING_SIZE + ALIGNMENT + 1,
            2 * STAGING_SIZE + 3,
        ]
    ),
    st.integers(MIN_DIRECT_SIZE, 3 * MIN_DIRECT_SIZE),
)


def payload(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def spy_direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths written by the direct path from now on (the real function still runs)."""
    import casbackup.store.local as local

    calls: list[Path] = []
    real = local.write_new_file_direct

    def spy(path: Path, data: direct_io.Pieces) -> None:
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(local, "write_new_file_direct", spy)
    return calls


Write = Callable[[int, Any], int]


def on_direct_writes(
    monkeypatch: pytest.MonkeyPatch, device: Callable[[Write, int, Any], int]
) -> None:
    """os.write goes to ``device(real_write, fd, data)`` for descriptors in O_DIRECT mode.

    Writes through the page cache (the tail, the fallback) are left alone.
    """
    real_write: Write = os.write

    def writing(fd: int, data: Any) -> int:
        return device(real_write, fd, data) if is_direct(fd) else real_write(fd, data)

    monkeypatch.setattr(os, "write", writing)


def refuse(errno_: int, text: str) -> Callable[[Write, int, Any], int]:
    def device(real_write: Write, fd: int, data: Any) -> int:
        raise OSError(errno_, text)

    return device


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]


@given(
    lengths=st.lists(st.integers(0, 3 * ALIGNMENT), max_size=8),
    start=st.integers(0, 30_000),
    length=st.integers(0, 30_000),
)
def test_pieces_read_as_their_concatenation(lengths: list[int], start: int, length: int) -> None:
    buffers = [payload(size + index)[index:] for index, size in enumerate(lengths)]
    joined = b"".join(buffers)
    pieces = direct_io.Pieces(buffers)
    assert pieces.size == len(joined)
    stop = min(start + length, pieces.size)
    assert b"".join(pieces.slices(start, stop)) == joined[start:stop]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=sizes, cuts=st.lists(st.floats(0, 1), max_size=6))
def test_objects_in_pieces_round_trip_through_direct_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, cuts: list[float]
) -> None:
    """A pack is written from its blobs as they are; pieces may straddle staging and tail."""
    store = LocalStore(tempfile.mkdtemp(dir=tmp_path))
    data = payload(size)
    edges = sorted({0, size, *(int(cut * size) for cut in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(edges)] + [b""]
    with monkeypatch.context() as patch:
        calls = spy_direct_writes(patch)
        store.put_pieces("packs/ab/x", pieces)
    assert len(calls) == 1 and store.direct_writes and store.get("packs/ab/x") == data
    assert leftovers(tmp_path) == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=sizes)
def test_large_objects_round_trip_through_direct_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    store = LocalStore(tempfile.mkdtemp(dir=tmp_path))  # examples share tmp_path
    with monkeypatch.context() as patch:
        calls = spy_direct_writes(patch)
        data = payload(size)
        store.put("packs/ab/x", data)
        store.create("packs/ab/y", bytearray(data))
    assert len(calls) == 2 and store.direct_writes
    assert store.get("packs/ab/x") == data and store.get("packs/ab/y") == data
    assert store.get("packs/ab/x", size - 5000, 4000) == data[size - 5000 : size - 1000]
    assert leftovers(store.root) == []


def test_small_objects_are_written_normally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_direct_writes(monkeypatch)
    store = LocalStore(tmp_path)
    store.put("manifests/m", b"m" * (MIN_DIRECT_SIZE - 1))
    assert calls == [] and store.get("manifests/m") == b"m" * (MIN_DIRECT_SIZE - 1)


def refuse_direct(monkeypatch: pytest.MonkeyPatch, *, at: str) -> None:
    """A filesystem without direct I/O: EINVAL at open (tmpfs before Linux 6.6) or at write (some FUSE)."""
    if at == "write":
        on_direct_writes(monkeypatch, refuse(errno.EINVAL, "Invalid argument"))
        return
    real_open = os.open

    def opening(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            os.close(real_open(path, flags & ~os.O_DIRECT, *args, **kwargs))  # as the kernel does
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", opening)


@pytest.mark.parametrize("at", ["open", "write"])
def test_a_filesystem_refusing_direct_io_gets_normal_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    store = LocalStore(tmp_path)
    data = payload(2 * MIN_DIRECT_SIZE + 3)
    with monkeypatch.context() as patch:
        refuse_direct(patch, at=at)
        calls = spy_direct_writes(patch)
        store.put("packs/ab/x", data)
        store.put("packs/ab/y", data)
    assert len(calls) == 1, "refused once, not asked again"
    assert not store.direct_writes
    assert store.get("packs/ab/x") == data and store.get("packs/ab/y") == data
    assert leftovers(tmp_path) == []


def test_a_short_direct_write_is_finished_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short: list[int] = []

    def device(real_write: Write, fd: int, data: Any) -> int:
        """The first direct write stops at an unaligned offset, from where direct I/O cannot go on."""
        if short:
            return real_write(fd, data)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        written = real_write(fd, memoryview(data)[:ALIGNMENT])
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        written += real_write(fd, memoryview(data)[ALIGNMENT : ALIGNMENT + 100])
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        short.append(written)
        return written

    on_direct_writes(monkeypatch, device)
    store = LocalStore(tmp_path)
    data = payload(3 * MIN_DIRECT_SIZE + 5)
    store.put("packs/ab/x", data)
    assert short == [ALIGNMENT + 100]
    assert store.get("packs/ab/x") == data and store.direct_writes


def test_disk_full_during_a_direct_write_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_direct_writes(monkeypatch, refuse(errno.ENOSPC, "No space left on device"))
    store = LocalStore(tmp_path)
    with pytest.raises(StoreFull) as caught:
        store.put("packs/ab/x", payload(2 * MIN_DIRECT_SIZE))
    assert "no space left" in caught.value.message
    assert list(tmp_path.rglob("*x*")) == [] and store.direct_writes


def test_einval_after_some_direct_writes_finishes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_calls: list[int] = []

    def device(real_write: Write, fd: int, data: Any) -> int:
        direct_calls.append(len(data))
        if len(direct_calls) > 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    on_direct_writes(monkeypatch, device)
    store = LocalStore(tmp_path)
    data = payload(STAGING_SIZE + 3 * ALIGNMENT + 7)
    store.put("packs/ab/x", data)
    assert direct_calls == [STAGING_SIZE, 3 * ALIGNMENT]
    assert store.get("packs/ab/x") == data and store.direct_writes


def test_a_direct_write_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    real_fsync = os.fsync
    synced: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    calls = spy_direct_writes(monkeypatch)
    LocalStore(tmp_path).put("packs/ab/x", payload(2 * MIN_DIRECT_SIZE + 1))
    assert len(calls) == 1 and synced == [2 * MIN_DIRECT_SIZE + 1]
