"""Who made something: tags that name a process precisely enough to tell if it still runs.

A pid alone can be reused by another process after a crash; pid plus the
process start time (from /proc) cannot. Shadow directories, temporary part
directories and locks carry such a tag, so cleanup can tell debris of a dead
run from work in progress.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

_TAG = re.compile(r"(\d+)_(\d+)")


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so count after its ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


@dataclass(frozen=True)
class ProcessTag:
    pid: int
    start: int

    @classmethod
    def current(cls) -> ProcessTag:
        pid = os.getpid()
        return cls(pid, process_start(pid) or 0)

    @classmethod
    def parse(cls, text: str) -> ProcessTag | None:
        m = _TAG.fullmatch(text)
        return cls(int(m.group(1)), int(m.group(2))) if m else None

    def alive(self) -> bool:
        """True while the very process that made this tag runs (on this host)."""
        return process_start(self.pid) == self.start

    def __str__(self) -> str:
        return f"{self.pid}_{self.start}"


NAME_MAX = 255  # bytes in one path component, on every Linux filesystem ClickHouse runs on
# The longest tag ``tagged_name`` adds: a pid (at most 2^22 on Linux), a start time (a 64-bit
# count of clock ticks) and 8 hex digits.
TAG_MAX = len(f"{2**22}_{2**64 - 1}_{'f' * 8}")


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: False for names and arguments Python decoded with
    undecodable bytes as lone surrogates (os.fsdecode, os.environ, sys.argv)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def cut_to_bytes(text: str, size: int) -> str:
    """The longest start of ``text`` that is at most ``size`` bytes of UTF-8, characters whole:
    the part of a name that fits beside a tag within NAME_MAX."""
    return text.encode()[:size].decode(errors="ignore")


def tagged_name(prefix: str) -> str:
    """``<prefix><pid>_<start>_<rand>``: unique, and naming this process for cleanup."""
    return f"{prefix}{ProcessTag.current()}_{secrets.token_hex(4)}"


def name_owner(name: str, prefix: str) -> ProcessTag | None:
    """The process a name made by ``tagged_name(prefix)`` (maybe with more after it) names."""
    if not name.startswith(prefix):
        return None
    return ProcessTag.parse("_".join(name.removeprefix(prefix).split("_")[:2]))
