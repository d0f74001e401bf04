"""Locks and leases: who is working on the repository right now.

Both are small JSON objects under ``locks/`` in the store, so every host that
shares the repository sees them, whatever catalog it uses:

- a **lease** (``locks/backup-<id>``, shared) is held by every running backup
  from before its first dedupe lookup until after its manifest is written.
  Garbage collection never deletes a pack it condemned while a lease that
  existed at condemnation time is still alive (see ``casbackup.gc``).
- an **exclusive lock** (``locks/exclusive-<name>``) is taken with an atomic
  create-if-absent: two ``gc`` or two ``run`` never overlap.

A holder refreshes its object every ``refresh`` seconds (``heartbeat_at``). A
lock is **stale** when its holder is provably gone: on the same machine, the
recorded process (pid and start time) no longer runs; elsewhere, no heartbeat
for ``ttl`` seconds (clocks of hosts sharing a repository are assumed to agree
within a few minutes; the default TTL is 15). A holder that was itself
suspended past its TTL notices (``check``) and refuses to commit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from casbackup.errors import (
    LockHeld,
    LockLost,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StoreError,
)
from casbackup.process import ProcessTag
from casbackup.repo.keys import LOCKS_PREFIX
from casbackup.store.base import ObjectStore, get_at_most

log = logging.getLogger(__name__)

# A lock object is about 300 bytes of JSON (host names, a backup name); a
# larger one is read no further and counts as unreadable, hence stale.
MAX_LOCK_BYTES = 64 * 1024

DEFAULT_TTL = 15 * 60.0
DEFAULT_REFRESH = 60.0

Clock = Callable[[], float]


@cache
def machine_id() -> str:
    """Identifies this machine, not just its hostname (containers often share those)."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(candidate).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname()


@dataclass(frozen=True)
class LockRecord:
    key: str
    kind: str
    id: str
    exclusive: bool
    host: str
    machine: str
    pid: int
    process_start: int
    created_at: float
    heartbeat_at: float
    command: str

    def stale(self, now: float, ttl: float = DEFAULT_TTL) -> bool:
        if self.machine == machine_id():
            return not ProcessTag(self.pid, self.process_start).alive()
        return now - self.heartbeat_at > ttl

    def describe(self) -> str:
        return f"{self.command or self.kind} (pid {self.pid} on {self.host}, lock {self.key})"

    def until_stale(self, now: float, ttl: float = DEFAULT_TTL) -> str:
        """How a live lock ends, for the one it stops: plain `unlock` keeps it until then."""
        if self.machine == machine_id():
            return "its process is running on this host: wait for it to finish, or stop it"
        silent = max(0.0, now - self.heartbeat_at)
        return (
            f"its host last renewed it {silent:.0f} s ago, and it is taken for dead after "
            f"{ttl:.0f} s without renewal (in {max(0.0, ttl - silent):.0f} s); if that host "
            f"is down, `casbackup unlock {self.key}` breaks it now"
        )

    def encode(self) -> bytes:
        document = asdict(self)
        del document["key"]
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def decode(cls, key: str, data: bytes) -> LockRecord:
        """Parse a lock object; an unreadable one counts as stale (heartbeat 0)."""
        try:
            doc = json.loads(data)
            return cls(
                key=key,
                kind=str(doc["kind"]),
                id=str(doc["id"]),
                exclusive=_flag(doc["exclusive"]),
                host=str(doc["host"]),
                machine=str(doc["machine"]),
                pid=int(doc["pid"]),
                process_start=int(doc["process_start"]),
                created_at=finite_time(doc["created_at"]),
                heartbeat_at=finite_time(doc["heartbeat_at"]),
                command=str(doc.get("command", "")),
            )
        except (ValueError, KeyError, TypeError, RecursionError):
            return cls.unreadable(key)

    @classmethod
    def unreadable(cls, key: str) -> LockRecord:
        return cls(
            key, "unreadable", "?", False, "?", "?", 0, 0, 0.0, 0.0, "unreadable lock object"
        )


def _flag(value: Any) -> bool:
    """A lock's JSON boolean; anything else (``"false"``, which bool() reads as true) is no
    lock casbackup wrote, so the lock is unreadable, like garbage."""
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is no boolean")
    return value


def finite_time(value: Any) -> float:
    """A lock's or a gc mark's time; NaN and infinities (json reads NaN, Infinity, 1e999) are
    no time a clock gives. A NaN heartbeat would never be stale and a NaN mark would skip the
    minimum age: such an object is unreadable, like garbage."""
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is no time")
    return seconds


def read_lock(store: ObjectStore, key: str) -> LockRecord:
    """The lock object at ``key``; one too large to be a lock is unreadable, like garbage."""
    try:
        return LockRecord.decode(key, get_at_most(store, key, MAX_LOCK_BYTES, "lock"))
    except ObjectTooLarge:
        return LockRecord.unreadable(key)


def read_locks(store: ObjectStore) -> list[LockRecord]:
    records = []
    for info in store.list(LOCKS_PREFIX):
        try:
            records.append(read_lock(store, info.key))
        except ObjectNotFound:
            continue  # released while we listed
    return records


class Lock:
    """A held lock or lease; a daemon thread keeps its heartbeat fresh until release."""

    def __init__(
        self,
        store: ObjectStore,
        kind: str,
        *,
        exclusive: bool,
        command: str = "",
        ttl: float = DEFAULT_TTL,
        refresh: float = DEFAULT_REFRESH,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.kind = kind
        self.exclusive = exclusive
        self.ttl = ttl
        self.refresh = refresh
        self.clock = clock
        self.id = secrets.token_hex(8)
        self.key = (
            f"{LOCKS_PREFIX}exclusive-{kind}" if exclusive else f"{LOCKS_PREFIX}{kind}-{self.id}"
        )
        tag = ProcessTag.current()
        now = clock()
        self.record = LockRecord(
            key=self.key,
            kind=kind,
            id=self.id,
            exclusive=exclusive,
            host=socket.gethostname(),
            machine=machine_id(),
            pid=tag.pid,
            process_start=tag.start,
            created_at=now,
            heartbeat_at=now,
            command=command,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._last_beat = now

    # --- holding -----------------------------------------------------------------

    def acquire(self) -> Lock:
        if self.exclusive:
            self._create_exclusive()
        else:
            self.store.put(self.key, self.record.encode())
        self._thread = threading.Thread(
            target=self._beat, name=f"casbackup-lock-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop beating and remove the object; a store that refuses leaves it to go stale.

        A release runs on the way out of a run, often because the store just
        failed it. Raising here would replace that error (or a committed
        backup's success) with this one and skip the caller's own cleanup.
        The object left behind is stale as soon as this process is gone:
        ``clean`` removes it, other hosts ignore it after the TTL.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost is None:
            try:
                self.store.delete(self.key)
            except StoreError as exc:
                log.warning("could not remove %s (clean removes it): %s", self.key, exc.message)

    def check(self) -> None:
        """Raise unless this lock is provably still ours.

        It must not have been broken or taken over (the store object is read,
        not just the heartbeat thread's last view), and we must not have been
        frozen past the TTL, during which others may have judged us dead.
        """
        if self._lost is not None:
            raise LockLost(what=self.key, detail=self._lost)
        if self.clock() - self._last_beat > self.ttl:
            raise LockLost(
                what=self.key,
                detail=f"no heartbeat for more than {self.ttl:.0f} s (process suspended?)",
            )
        try:
            current = read_lock(self.store, self.key)
        except ObjectNotFound:
            raise LockLost(
                what=self.key, detail="the lock object was removed (casbackup unlock?)"
            ) from None
        if current.id != self.id:
            raise LockLost(what=self.key, detail=f"the lock was taken over by {current.describe()}")

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- internals ---------------------------------------------------------------

    def _create_exclusive(self) -> None:
        for _attempt in range(2):
            try:
                self.store.create(self.key, self.record.encode())
                return
            except ObjectExists:
                try:
                    holder = read_lock(self.store, self.key)
                except ObjectNotFound:
                    continue  # released in between: try again
                now = self.clock()
                if not holder.stale(now, self.ttl):
                    raise LockHeld(
                        what=f"the repository ({self.kind})",
                        holder=holder.describe(),
                        advice=holder.until_stale(now, self.ttl),
                    ) from None
                self.store.delete(self.key)  # its holder is gone: break it
        raise LockHeld(
            what=f"the repository ({self.kind})",
            holder="another process that just took it",
            advice="wait for it to finish",
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                current = read_lock(self.store, self.key)
            except ObjectNotFound:
                self._lost = "the lock object was removed (casbackup unlock?)"
                return
            except StoreError:
                # The store is unreachable for now (it already retried): beat
                # again later. Ending the thread would let the lease expire
                # under a live run; check() judges a long outage by the TTL.
                continue
            if current.id != self.id:
                self._lost = f"the lock was taken over by {current.describe()}"
                return
            now = self.clock()
            self.record = LockRecord(**{**asdict(self.record), "heartbeat_at": now})
            try:
                self.store.put(self.key, self.record.encode())
                self._last_beat = now
            except Exception:
                continue


def new_run_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(6)}"
