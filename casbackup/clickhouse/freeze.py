"""FREEZE snapshots: names, shadow directories, and their removal.

``ALTER TABLE t FREEZE WITH NAME 'n'`` hard-links the table's active parts
under ``<disk>/shadow/n/<table's path relative to the disk>/`` on every disk.
The links pin disk space until they are removed, so casbackup removes each
table's shadow as soon as that table is stored, removes the whole run's
shadow when the run ends however it ends, and ``casbackup clean`` removes
what a killed run left.

A freeze name says which process made it: ``casbackup_<pid>_<start>_<rand>``,
where ``start`` is the process start time from /proc. ``clean`` leaves a
shadow alone while that exact process is alive (a pid alone could have been
reused by another process since).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from casbackup.clickhouse.server import ClickHouseServer, Disk, TableInfo
from casbackup.errors import ClickHouseError
from casbackup.process import ProcessTag, tagged_name

FREEZE_PREFIX = "casbackup_"
_FREEZE_NAME = re.compile(r"^casbackup_(\d+)_(\d+)_([0-9a-f]{8})$")


@dataclass(frozen=True)
class FreezeName:
    value: str

    @classmethod
    def for_this_process(cls) -> FreezeName:
        return cls(tagged_name(FREEZE_PREFIX))

    @classmethod
    def parse(cls, value: str) -> FreezeName | None:
        return cls(value) if _FREEZE_NAME.match(value) else None

    def owner_alive(self) -> bool:
        m = _FREEZE_NAME.match(self.value)
        return m is not None and ProcessTag(int(m.group(1)), int(m.group(2))).alive()

    def __str__(self) -> str:
        return self.value


def shadow_root(disk: Disk, name: FreezeName) -> Path:
    return disk.path / "shadow" / name.value


def table_shadow_dirs(
    server: ClickHouseServer, table: TableInfo, name: FreezeName
) -> list[tuple[Disk, Path]]:
    """Where FREEZE put this table's parts, one directory per data path (disk)."""
    found = []
    for data_path in table.data_paths:
        disk = server.disk_of(data_path)
        relative = Path(data_path).relative_to(disk.path)
        found.append((disk, shadow_root(disk, name) / relative))
    return found


def remove_table_shadow(server: ClickHouseServer, table: TableInfo, name: FreezeName) -> None:
    """Release one table's frozen hard links (UNFREEZE where the server has it)."""
    if server.info.has_unfreeze:
        with contextlib.suppress(
            ClickHouseError
        ):  # table dropped meanwhile: the files remain ours to remove
            server.unfreeze(table.database, table.name, name.value)
    for disk, directory in table_shadow_dirs(server, table, name):
        _remove_under(directory, shadow_root(disk, name))


def remove_run_shadow(server: ClickHouseServer, name: FreezeName) -> None:
    """Remove everything left under ``shadow/<name>`` on every disk."""
    for disk in server.disks:
        root = shadow_root(disk, name)
        _remove_under(root, root)


def stale_shadows(
    server: ClickHouseServer, *, include_live: bool = False
) -> Iterator[tuple[Disk, FreezeName, bool]]:
    """casbackup shadows on every disk: (disk, name, owner still running)."""
    for disk in server.disks:
        shadow = disk.path / "shadow"
        if not shadow.is_dir():
            continue
        for entry in sorted(shadow.iterdir()):
            name = FreezeName.parse(entry.name)
            if name is None or not entry.is_dir():
                continue
            alive = name.owner_alive()
            if include_live or not alive:
                yield disk, name, alive


def _remove_under(directory: Path, root: Path) -> None:
    """rmtree ``directory`` (inside ``root``, a shadow/<casbackup name>), then empty parents up to root."""
    if root.parent.name != "shadow" or FreezeName.parse(root.name) is None:
        raise ClickHouseError(detail=f"refusing to remove {directory}: not a casbackup shadow")
    if directory != root and root not in directory.parents:
        raise ClickHouseError(detail=f"refusing to remove {directory}: outside {root}")
    shutil.rmtree(directory, ignore_errors=True)
    current = directory.parent if directory != root else None
    while current is not None and (current == root or root in current.parents):
        try:
            current.rmdir()
        except OSError:
            break  # not empty: other tables of this run still frozen
        if current == root:
            break
        current = current.parent
