"""A file's own OSError names the file with its side's exit code; the process's limits do not."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from casbackup.errors import ExitCode, SourceFileUnreadable, TargetUnwritable
from casbackup.file_errors import PROCESS_LIMITS, reading, writing

FileError = type[SourceFileUnreadable] | type[TargetUnwritable]

Side = Callable[[Path], AbstractContextManager[None]]
SIDES: list[tuple[Side, FileError, ExitCode, str]] = [
    (reading, SourceFileUnreadable, ExitCode.SOURCE_FILES, "cannot read"),
    (writing, TargetUnwritable, ExitCode.TARGET_FILES, "cannot write"),
]


@pytest.mark.parametrize(("side", "error", "code", "verb"), SIDES)
def test_the_files_error_names_it(
    tmp_path: Path, side: Side, error: FileError, code: ExitCode, verb: str
) -> None:
    path = tmp_path / "data.bin"
    cause = OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(error) as raised, side(path):
        raise cause
    assert str(raised.value) == f"{verb} {path}: Input/output error"
    assert raised.value.exit_code == code
    assert raised.value.__cause__ is cause  # kept for --debug


@pytest.mark.parametrize(("side", "error", "code", "verb"), SIDES)
def test_a_real_failing_call_is_named(
    tmp_path: Path, side: Side, error: FileError, code: ExitCode, verb: str
) -> None:
    missing = tmp_path / "gone" / "data.bin"
    with pytest.raises(error, match=f"^{verb} .*: No such file or directory$"), side(missing):
        os.open(missing, os.O_RDONLY)


@pytest.mark.parametrize("limit", sorted(PROCESS_LIMITS))
@pytest.mark.parametrize(("side", "error", "code", "verb"), SIDES)
def test_the_process_limits_are_not_the_files(
    tmp_path: Path, side: Side, error: FileError, code: ExitCode, verb: str, limit: int
) -> None:
    """Out of descriptors or memory: an internal error (exit 70), not the disk's fault."""
    with pytest.raises(OSError) as raised, side(tmp_path / "data.bin"):
        raise OSError(limit, os.strerror(limit))
    assert type(raised.value) is OSError
    assert raised.value.errno == limit


def test_other_errors_pass_untouched(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a file error"), writing(tmp_path):
        raise ValueError("not a file error")
