"""Object stores: where repository objects live."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from casbackup.config import S3Settings
from casbackup.errors import ConfigError, StoreError
from casbackup.store.base import ObjectInfo, ObjectStore, validate_key, validate_prefix
from casbackup.store.local import LocalStore

if TYPE_CHECKING:
    from casbackup.store.s3 import S3Options

MacroSource = Callable[[], Mapping[str, str]]

_MACRO = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def open_store(
    location: str,
    *,
    s3: S3Settings | None = None,
    server_macros: MacroSource | None = None,
) -> ObjectStore:
    """A store for a repository location: a local path, file:// URL, or s3://bucket/prefix.

    An S3 prefix may contain macros (``{shard}``, ``{replica}``, ``{host}``…)
    so that every shard of a cluster shares one config yet writes its own
    repository; see ``expand_macros``. ``server_macros`` is asked only when
    the config does not define a macro the location uses.
    """
    if location.startswith("s3://"):
        # Imported here: boto3 costs ~0.5 s of start-up that local repositories need not pay.
        from casbackup.store.s3 import S3Store

        settings = s3 or S3Settings()
        bucket, prefix = parse_s3_location(expand_macros(location, settings.macros, server_macros))
        return S3Store(bucket, prefix, s3_options(settings))
    if location[:3].lower() == "s3:":
        # Not a relative directory named "s3:": a nightly job would back up
        # to this host's disk while its operator believes it goes to S3.
        raise ConfigError(
            detail=f"repository location {location!r} is not s3://bucket/prefix "
            f"(a local directory by that name: ./{location})"
        )
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(
            detail=f"unsupported repository location {location!r} (use a path or s3://bucket/prefix)"
        )
    return LocalStore(Path(location.removeprefix("file://")))


def parse_s3_location(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as (bucket, prefix without slashes at either end)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket):
        raise ConfigError(detail=f"repository location {location!r} does not name a valid bucket")
    prefix = prefix.strip("/")
    try:
        validate_prefix(prefix)
    except StoreError as exc:
        raise ConfigError(
            detail=f"repository location {location!r} has an invalid prefix: {exc.message}"
        ) from None
    return bucket, prefix


def location_macros(location: str) -> list[str]:
    return _MACRO.findall(location)


def expand_macros(location: str, configured: Mapping[str, str], server: MacroSource | None) -> str:
    """Replace ``{name}`` macros: ``[s3] macros`` first, then {host}, then the server's.

    ``{host}`` is this machine's hostname unless the config sets it; every
    other macro the config lacks comes from ClickHouse's ``system.macros``
    (where ``{shard}`` and ``{replica}`` of a replicated cluster already live),
    which is queried only then, so commands that need no server work without
    one.
    """
    names = location_macros(location)
    values = {name: configured[name] for name in names if name in configured}
    if "host" in names and "host" not in values:
        values["host"] = socket.gethostname()
    missing = [name for name in names if name not in values]
    if missing and server is not None:
        known = server()
        values.update({name: known[name] for name in missing if name in known})
    unresolved = sorted({name for name in names if name not in values})
    if unresolved:
        listed = ", ".join(f"{{{name}}}" for name in unresolved)
        raise ConfigError(
            detail=f"repository location {location!r} uses {listed}, which neither [s3] macros "
            "nor the ClickHouse server's system.macros define"
        )
    for name, value in values.items():
        try:
            validate_key(value)
        except StoreError as exc:
            raise ConfigError(
                detail=f"macro {{{name}}} = {value!r} is not a valid part of a prefix: {exc.message}"
            ) from None
    return _MACRO.sub(lambda found: values[found.group(1)], location)


def s3_options(settings: S3Settings) -> S3Options:
    from casbackup.store.s3 import MiB, S3Options

    secret = settings.secret_access_key
    return S3Options(
        region=settings.region,
        endpoint_url=settings.endpoint_url,
        access_key_id=settings.access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        addressing_style=settings.addressing_style,
        storage_class=settings.storage_class,
        sse=None if settings.sse == "none" else settings.sse,
        sse_kms_key_id=settings.sse_kms_key_id,
        max_attempts=settings.max_attempts,
        retry_mode=settings.retry_mode,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        concurrency=settings.concurrency,
        multipart_threshold=settings.multipart_threshold_mb * MiB,
        multipart_chunk=settings.multipart_chunk_mb * MiB,
    )


__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "expand_macros",
    "location_macros",
    "open_store",
    "parse_s3_location",
]
