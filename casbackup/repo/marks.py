"""Condemnation marks: packs garbage collection intends to delete, and who might still need them.

A mark is a store object ``condemned/<id>`` (JSON): when it was made, the
packs it condemns, and the leases that were alive when it was made. It lives
in the store, not the catalog, so that every host sharing the repository sees
it, whichever catalog it uses: a backup reads the marks when it starts and
never deduplicates against a condemned pack.

Marks are written in two steps (packs first, then the lease list taken after
the packs were visible); a mark whose lease list is missing was interrupted
between the two and is completed by the next gc before it can ripen.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from casbackup.errors import ObjectNotFound
from casbackup.repo.keys import CONDEMNED_PREFIX
from casbackup.repo.locks import finite_time
from casbackup.store.base import ObjectStore, get_at_most

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# A mark costs about 70 bytes per pack. gc writes at most MAX_MARK_PACKS per
# mark (7 MB); readers accept up to MAX_MARK_BYTES (about 950,000 packs, what
# an earlier release could write for 30 TB condemned in one run) and treat a
# larger object as damage: ignoring a mark could let a backup rely on packs
# another gc deletes.
MAX_MARK_PACKS = 100_000
MAX_MARK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Mark:
    id: str
    created_at: float
    packs: frozenset[bytes]
    leases: frozenset[str] | None  # None: written, lease list not recorded yet

    @property
    def key(self) -> str:
        return f"{CONDEMNED_PREFIX}{self.id}"

    def encode(self) -> bytes:
        return json.dumps(
            {
                "created_at": self.created_at,
                "packs": sorted(p.hex() for p in self.packs),
                "leases": None if self.leases is None else sorted(self.leases),
            }
        ).encode()

    @classmethod
    def decode(cls, mark_id: str, data: bytes) -> Mark | None:
        """A mark from the store; None if unreadable (it is then ignored, which only delays deletion)."""
        try:
            doc = json.loads(data)
            packs = frozenset(bytes.fromhex(p) for p in doc["packs"] if _HEX64.match(p))
            leases = None if doc["leases"] is None else frozenset(str(x) for x in doc["leases"])
            return cls(mark_id, finite_time(doc["created_at"]), packs, leases)
        except (ValueError, KeyError, TypeError, RecursionError):
            return None


def new_mark_id(now: float) -> str:
    return f"{int(now)}-{secrets.token_hex(6)}"


def read_marks(store: ObjectStore) -> list[Mark]:
    marks = []
    for info in store.list(CONDEMNED_PREFIX):
        mark_id = info.key[len(CONDEMNED_PREFIX) :]
        try:
            mark = Mark.decode(mark_id, get_at_most(store, info.key, MAX_MARK_BYTES, "mark"))
        except ObjectNotFound:
            continue
        if mark is not None:
            marks.append(mark)
    return sorted(marks, key=lambda m: (m.created_at, m.id))


def write_mark(store: ObjectStore, mark: Mark) -> None:
    store.put(mark.key, mark.encode())


def condemned_packs(store: ObjectStore) -> set[bytes]:
    return {p for mark in read_marks(store) for p in mark.packs}
