"""Parts on disk: names, frozen part directories and the files in them."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from casbackup.clickhouse.checksums import FileChecksum, read_checksums
from casbackup.errors import SourceFileUnreadable
from casbackup.file_errors import reading
from casbackup.process import is_utf8

# FREEZE writes these for zero-copy object disks; they must never be attached,
# and these are never written by FREEZE at all (CLICKHOUSE.md, "FREEZE").
EXCLUDED_FILES = frozenset({"frozen_metadata.txt", "txn_version.txt", "delete-on-destroy.txt"})

_NEW_FORMAT = re.compile(
    r"^(?P<partition>[^_]+)_(?P<min>\d+)_(?P<max>\d+)_(?P<level>\d+)(?:_(?P<mutation>\d+))?$"
)


@dataclass(frozen=True)
class PartName:
    partition_id: str
    min_block: int
    max_block: int
    level: int
    mutation: int

    @classmethod
    def parse(cls, name: str) -> PartName | None:
        """``<partition>_<min>_<max>_<level>[_<mutation>]``; None for other shapes (legacy, tmp)."""
        m = _NEW_FORMAT.match(name)
        if not m:
            return None
        return cls(
            m.group("partition"),
            int(m.group("min")),
            int(m.group("max")),
            int(m.group("level")),
            int(m.group("mutation") or 0),
        )


@dataclass(frozen=True)
class DiskFile:
    """A file of a frozen part, and the identity of the inode it is."""

    path: Path
    relative: str  # inside the part directory, '/'-separated (projections are sub-directories)
    size: int
    mode: int
    dev: int
    ino: int
    mtime_ns: int


def part_files(part_dir: Path) -> list[DiskFile]:
    """Every regular file of a part, sorted, symlinks and special files refused."""
    found: list[DiskFile] = []
    # os.walk skips a directory it may not list unless told otherwise: the part
    # would be stored without those files, and the backup committed.
    for dirpath, dirnames, filenames in os.walk(part_dir, onerror=_refuse, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            if base == part_dir and name in EXCLUDED_FILES:
                continue
            path = base / name
            with reading(path):
                st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue  # ClickHouse parts hold regular files only
            relative = path.relative_to(part_dir).as_posix()
            if not is_utf8(relative):
                raise SourceFileUnreadable(
                    path=os.fsencode(path).decode(errors="backslashreplace"),
                    reason="its name is not UTF-8, which a manifest cannot hold and no "
                    "ClickHouse part file has; move it out of the table's part directory",
                )
            found.append(
                DiskFile(
                    path=path,
                    relative=relative,
                    size=st.st_size,
                    mode=stat.S_IMODE(st.st_mode),
                    dev=st.st_dev,
                    ino=st.st_ino,
                    mtime_ns=st.st_mtime_ns,
                )
            )
    return found


def _refuse(error: OSError) -> None:
    with reading(error.filename):
        raise error


def frozen_part_dirs(table_shadow: Path) -> Iterator[Path]:
    """Part directories FREEZE wrote for one table on one disk."""
    with reading(table_shadow):  # e.g. a user who may not read ClickHouse's data directory
        if not table_shadow.is_dir():
            return
        entries = sorted(table_shadow.iterdir())
        parts = [e for e in entries if e.is_dir() and not e.is_symlink() and e.name != "detached"]
    yield from parts


def read_count(part_dir: Path) -> int | None:
    """Rows of a part from its count.txt (absent in very old formats)."""
    try:
        text = (part_dir / "count.txt").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def part_checksums(part_dir: Path) -> dict[str, FileChecksum]:
    """ClickHouse's checksums of a part's files, projections included, by relative path.

    Each projection (``<name>.proj/``) has a checksums.txt of its own.
    """
    result: dict[str, FileChecksum] = {}
    directories = [part_dir, *sorted(p for p in part_dir.glob("*.proj") if p.is_dir())]
    for directory in directories:
        listed = read_checksums(directory / "checksums.txt")
        if not listed:
            continue
        prefix = "" if directory == part_dir else f"{directory.name}/"
        for name, checksum in listed.items():
            result[prefix + name] = checksum
    return result
