"""The byte store contract: what every backend (local directory, S3) provides.

Like restic's backend layer, a store knows nothing of chunks, packs or backups:
keys map to immutable byte strings. Everything above it (the repository) relies
only on the behaviour pinned down here and checked by
``tests/store/conformance.py``:

- ``put`` is atomic: a reader sees the whole object or no object, never a torn
  one, and a crash mid-put leaves at most temporary debris the store can clean.
  ``put_pieces`` is the same for an object given as consecutive buffers.
- ``get`` with a range returns the bytes of that range that exist (shorter at the
  end of the object, empty past it); a missing key raises ``ObjectNotFound``.
- ``list`` yields every committed key with the given string prefix, sorted.
- ``delete`` of a missing key is not an error (S3 semantics), so a retried or
  re-run delete is harmless.
- ``create`` is ``put`` that fails with ``ObjectExists`` if the key exists,
  atomically: of two racing creators exactly one wins (locks rely on it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from casbackup.errors import InvalidKey, ObjectTooLarge

# Keys are plain ASCII paths: what S3 and every POSIX filesystem accept alike.
_KEY_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
MAX_KEY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    # Tells this object from another written under the same key later (S3's
    # ETag; a local file's mtime). Opaque, compared for equality only, and ""
    # where a store does not say.
    version: str = ""


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable objects."""

    def describe(self) -> str:
        """Where this store is, for messages; never includes credentials."""
        ...

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    def put_pieces(self, key: str, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """``put`` of the pieces' concatenation; a store may write them without joining."""
        ...

    def create(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...


@runtime_checkable
class Prefetches(Protocol):
    """A store that can start reading a range before it is asked for it.

    A local repository read back days after it was written comes from the
    disk, and each restore thread would otherwise wait for its own ranged read
    before decompressing it. A hint lets the kernel read the next ranges while
    the current ones are being decompressed and written. A hint fails only
    where ``get`` would (a malformed key), and never changes what ``get``
    returns; S3 has nothing to hint (each GET is its own request, already in
    parallel).
    """

    def prefetch(self, key: str, offset: int, length: int) -> None: ...


@runtime_checkable
class LeavesTemporaries(Protocol):
    """A store where a killed write leaves debris invisible to ``list``.

    A local store leaves temporary files beside their targets; S3 keeps the
    parts of a multipart upload that was never completed (and bills them).
    ``casbackup clean`` removes what is older than any live write can be;
    ``dry_run`` only counts it, for ``clean --dry-run``. ``under`` names the
    key prefixes the caller writes to: a repository at a bucket's root shares
    the bucket's uploads with other tools, whose uploads are not ours to abort.
    """

    def remove_stale_temporaries(
        self, older_than_seconds: float, *, under: tuple[str, ...], dry_run: bool = False
    ) -> int: ...


def get_at_most(store: ObjectStore, key: str, limit: int, what: str) -> bytes:
    """The whole object; ``ObjectTooLarge`` if it holds more than ``limit`` bytes.

    Objects read back from a store are untrusted: a sparse file or a hostile
    upload where a small JSON object belongs must cost ``limit`` bytes of
    memory at most, not its size. One ranged read of ``limit + 1`` bytes
    tells the two apart on every store.
    """
    data = store.get(key, 0, limit + 1)
    if len(data) > limit:
        raise ObjectTooLarge(key=key, limit=limit, what=what)
    return data


def validate_key(key: str) -> str:
    """Reject keys that could escape a directory store or mean different things on S3.

    Each component must start with an alphanumeric character, which rules out
    ``.``/``..``, hidden temporary files and empty components in one rule.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(key=key, reason="empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key=key[:60] + "...", reason=f"longer than {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise InvalidKey(key=key, reason="absolute")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(key=key, reason="empty, '.' or '..' component")
        if not _KEY_COMPONENT.match(part):
            raise InvalidKey(
                key=key, reason=f"component {part!r} has characters outside [A-Za-z0-9._=+-]"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A list prefix is a key, a key followed by '/', a partial last component, or empty."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    validate_key(body)
    return prefix


def validate_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid byte range offset={offset} length={length}")
