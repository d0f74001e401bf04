"""The archiver's boundary between errors of the files it reads and errors of where chunks go.

The chunker reads by descriptor, so the archiver names the file in a read
error; an error raised while a chunk is handed on (the index, the store) is
not the file's and must keep its own type. The index oracle is the hook: the
archiver calls it for every chunk it has just read, between two reads.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from casbackup.errors import ExitCode, SourceFileUnreadable
from casbackup.repo.archiver import FileArchiver
from casbackup.repo.chunker import ChunkerParams
from casbackup.repo.compression import ChunkCompressor
from casbackup.repo.writer import ChunkWriter
from casbackup.store.local import LocalStore

SMALL = ChunkerParams(min_size=64, avg_size=256, max_size=1024)


def archiver_with(
    tmp_path: Path, known: Callable[[Sequence[bytes]], set[bytes]]
) -> tuple[FileArchiver, ChunkWriter]:
    writer = ChunkWriter(LocalStore(tmp_path / "store"), ChunkCompressor(), lambda *a: None)
    return FileArchiver(SMALL, writer, known, threads=2), writer


def test_a_file_that_shrinks_mid_read_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "column.bin"
    path.write_bytes(random.Random(1).randbytes(50_000))

    def known(chunk_ids: Sequence[bytes]) -> set[bytes]:
        os.truncate(path, 100)  # after the first chunk: the window still holds the old bytes
        return set()

    archiver, writer = archiver_with(tmp_path, known)
    with writer, archiver, pytest.raises(SourceFileUnreadable) as raised:
        list(archiver.store_files([path]))
    assert raised.value.exit_code == ExitCode.SOURCE_FILES
    assert raised.value.message == (
        f"cannot read {path}: the file became shorter while it was being read"
    )


def test_an_error_of_the_index_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "column.bin"
    path.write_bytes(random.Random(2).randbytes(50_000))

    def known(chunk_ids: Sequence[bytes]) -> set[bytes]:
        raise OSError(28, "No space left on device")  # the catalog's disk, not the source's

    archiver, writer = archiver_with(tmp_path, known)
    with writer, archiver, pytest.raises(OSError) as raised:
        list(archiver.store_files([path]))
    assert not isinstance(raised.value, SourceFileUnreadable)
    assert raised.value.errno == 28
