"""Where each kind of object lives in a store: the one place that knows the key layout."""

from __future__ import annotations

import re

from casbackup.errors import IntegrityError, InvalidName

CONFIG_KEY = "config"
PACKS_PREFIX = "packs/"
MANIFESTS_PREFIX = "manifests/"
LOCKS_PREFIX = "locks/"
CONDEMNED_PREFIX = "condemned/"
# Every prefix the repository writes objects under (CONFIG_KEY aside, which is
# one small object): `clean` aborts stale uploads below these only, since a
# repository at a bucket's root shares the bucket's uploads with other tools.
WRITTEN_PREFIXES = (PACKS_PREFIX, MANIFESTS_PREFIX, LOCKS_PREFIX, CONDEMNED_PREFIX)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Backup names become store keys and appear in shell scripts: keep them plain.
BACKUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def pack_key(pack_id: bytes) -> str:
    digest = pack_id.hex()
    return f"{PACKS_PREFIX}{digest[:2]}/{digest}"


def pack_id_from_key(key: str) -> bytes:
    """Inverse of ``pack_key``; rejects keys that are not well-formed pack names."""
    name = key.rsplit("/", 1)[-1]
    if (
        not key.startswith(PACKS_PREFIX)
        or not _HEX64.match(name)
        or key != pack_key(bytes.fromhex(name))
    ):
        raise IntegrityError(detail=f"unexpected object {key!r} under {PACKS_PREFIX}")
    return bytes.fromhex(name)


def validate_backup_name(name: str) -> str:
    if not BACKUP_NAME.match(name):
        raise InvalidName(
            name=name,
            reason="use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    return name


def manifest_key(name: str) -> str:
    return f"{MANIFESTS_PREFIX}{validate_backup_name(name)}"


def backup_name_from_key(key: str) -> str:
    name = key[len(MANIFESTS_PREFIX) :]
    if not key.startswith(MANIFESTS_PREFIX) or not BACKUP_NAME.match(name):
        raise IntegrityError(detail=f"unexpected object {key!r} under {MANIFESTS_PREFIX}")
    return name
