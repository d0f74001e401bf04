"""A repository: an object store holding a config object, packs and manifests.

This is the content-addressed layer. It knows packs, trailers and manifests and
nothing of ClickHouse or of the catalog; the catalog is an index built on top of
what is here (and rebuilt from it, see ``casbackup.catalog.rebuild``).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from casbackup.errors import (
    BackupExists,
    BackupNotFound,
    ConfigChanged,
    ConfigMissing,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    PackCorrupt,
    PackMissing,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
)
from casbackup.repo import keys
from casbackup.repo import manifest as manifest_codec
from casbackup.repo.chunker import ChunkerParams
from casbackup.repo.manifest import Manifest
from casbackup.repo.pack import (
    FOOTER_SIZE,
    MAX_PACK_BYTES,
    PackEntry,
    parse_footer,
    parse_trailer,
)
from casbackup.store.base import ObjectInfo, ObjectStore, get_at_most

log = logging.getLogger(__name__)

REPOSITORY_FORMAT = "casbackup-repository"
REPOSITORY_VERSION = 1
T = TypeVar("T")

# A config is about 300 bytes of JSON; a larger object is not one (read no further).
MAX_CONFIG_BYTES = 64 * 1024

_REPOSITORY_ID = re.compile(r"^[0-9a-f]{32}$")  # what init writes: uuid4().hex
# First guess of how much of a pack's tail holds footer + trailer: one ranged
# read covers ~300 entries; bigger trailers take a second read.
TRAILER_PROBE = 16 * 1024


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    created: datetime
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    version: int = REPOSITORY_VERSION

    def encode(self) -> bytes:
        doc = {
            "format": REPOSITORY_FORMAT,
            "version": self.version,
            "id": self.id,
            "created": self.created.isoformat(),
            "hash": "blake3",
            "compression": "zstd",
            "chunker": self.chunker.to_dict(),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes, location: str) -> RepositoryConfig:
        """Parse a config read from the store: every field's type is checked, not assumed.

        The object is untrusted input like any other; a field of the wrong
        JSON type must be an integrity error naming the config, not an
        AttributeError deep inside whatever uses it.
        """
        try:
            doc: Any = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != REPOSITORY_FORMAT:
                raise ValueError("not a casbackup repository config")
        except ValueError as exc:  # UnicodeDecodeError too
            raise RepositoryError(
                detail=f"{location}: unreadable repository config ({exc})"
            ) from None
        except RecursionError:  # json's parser recurses once per nested [ or {
            raise RepositoryError(
                detail=f"{location}: unreadable repository config (nested too deeply)"
            ) from None
        version = doc.get("version")
        if type(version) is not int or version != REPOSITORY_VERSION:  # not True, not 1.0
            raise UnsupportedFormat(
                what=f"repository {location}",
                found=version,
                supported=REPOSITORY_VERSION,
                advice="use a casbackup release that supports it",
            )
        try:
            repo_id = _field(doc, "id", str)
            if not _REPOSITORY_ID.match(repo_id):
                raise ValueError(f"id {repo_id[:40]!r} is not 32 lower-case hex digits")
            created = datetime.fromisoformat(_field(doc, "created", str))
            chunker = ChunkerParams.from_dict(_field(doc, "chunker", dict))
            # Every digest and every chunk is read with these two; a repository
            # written with others must not be read as if it were not.
            for name, known in (("hash", "blake3"), ("compression", "zstd")):
                if (algorithm := _field(doc, name, str)) != known:
                    raise ValueError(
                        f"{name} {algorithm[:40]!r}: this casbackup knows {known!r} only"
                    )
        except ValueError as exc:
            raise RepositoryError(detail=f"{location}: invalid repository config ({exc})") from None
        return cls(id=repo_id, created=created, chunker=chunker)


_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _field(doc: dict[str, Any], name: str, kind: type[T]) -> T:
    """``doc[name]``, which must be a JSON value of type ``kind``."""
    if name not in doc:
        raise ValueError(f"no {name!r}")
    value = doc[name]
    if not isinstance(value, kind):
        found = _JSON_TYPES.get(type(value), type(value).__name__)
        raise ValueError(f"{name!r} is a JSON {found}, expected a JSON {_JSON_TYPES[kind]}")
    return value


@dataclass(frozen=True, slots=True)
class ManifestStamp:
    """What tells one manifest from another under the same name, without reading either.

    A name another host deleted and used again holds another manifest, and
    catalog rows describing the old one would let gc free what the new one
    needs. Sizes differ with every part and file listed, but not always; the
    store's version of the object (``ObjectInfo.version``) differs whenever it
    was written again. ``None`` where it is not known (catalog rows from
    before it was recorded, stores that give none): then the size decides.
    """

    size: int | None
    version: str | None = None

    @classmethod
    def of(cls, info: ObjectInfo) -> ManifestStamp:
        return cls(info.size, info.version or None)

    def differs(self, other: ManifestStamp) -> bool:
        """Whether the two are provably different objects."""
        return (self.size is not None and other.size is not None and self.size != other.size) or (
            self.version is not None and other.version is not None and self.version != other.version
        )


class Repository:
    def __init__(self, store: ObjectStore, config: RepositoryConfig) -> None:
        self.store = store
        self.config = config
        self._strays: set[str] = set()  # objects that are no pack or manifest, reported once

    @property
    def id(self) -> str:
        return self.config.id

    # --- lifecycle -----------------------------------------------------------

    @classmethod
    def init(cls, store: ObjectStore, chunker: ChunkerParams | None = None) -> Repository:
        return cls.create(store, cls.new_config(store, chunker))

    @classmethod
    def new_config(
        cls, store: ObjectStore, chunker: ChunkerParams | None = None
    ) -> RepositoryConfig:
        """The config of a new repository in ``store``, not written yet.

        Refused where a repository is, and also where only its packs or
        manifests are: a config with a new id there would cut every backup
        off (each manifest names the id of its repository).
        """
        _refuse_config(store)
        _refuse_remains(store)
        return RepositoryConfig(
            id=uuid.uuid4().hex, created=datetime.now(UTC), chunker=chunker or ChunkerParams()
        )

    @classmethod
    def recovered_config(cls, store: ObjectStore) -> RepositoryConfig:
        """A config for a store that lost its own, with the id its manifests record.

        Only the id matters for reading: the chunker parameters are those
        ``init`` has always written (they decide how new files are cut, so
        other parameters would only cost deduplication), and ``created`` is
        the start of the oldest backup.
        """
        _refuse_config(store)
        manifests = _readable_manifests(store)
        location = store.describe()
        ids = sorted({m.repository_id for m in manifests})
        if not ids:
            raise IntegrityError(
                detail=f"{location}: no readable manifest records the repository's id, so it "
                "cannot be recovered; restore `config` from a copy"
            )
        if len(ids) > 1:
            owners = "; ".join(
                f"{repo_id}: " + ", ".join(m.name for m in manifests if m.repository_id == repo_id)
                for repo_id in ids
            )
            raise IntegrityError(
                detail=f"{location}: the manifests record {len(ids)} repository ids ({owners}); "
                "move the manifests of the other repository out of manifests/ and run again"
            )
        oldest = min(m.started_at for m in manifests)
        return RepositoryConfig(id=ids[0], created=oldest, chunker=ChunkerParams())

    @classmethod
    def create(cls, store: ObjectStore, config: RepositoryConfig) -> Repository:
        """Write ``config``; of two racing ``init`` runs exactly one wins."""
        try:
            store.create(keys.CONFIG_KEY, config.encode())
        except ObjectExists:
            raise RepositoryExists(location=store.describe()) from None
        return cls(store, config)

    @classmethod
    def open(cls, store: ObjectStore) -> Repository:
        try:
            data = get_at_most(store, keys.CONFIG_KEY, MAX_CONFIG_BYTES, "repository config")
        except ObjectNotFound:
            _refuse_remains(store)
            raise RepositoryNotFound(location=store.describe()) from None
        return cls(store, RepositoryConfig.decode(data, store.describe()))

    # --- packs ---------------------------------------------------------------

    def list_packs(self) -> Iterator[tuple[bytes, int]]:
        """Every pack in the store as (pack id, size); other objects there are reported, not fatal."""
        for info in self.store.list(keys.PACKS_PREFIX):
            try:
                pack_id = keys.pack_id_from_key(info.key)
            except IntegrityError:
                self._stray(info.key, "pack")
                continue
            yield pack_id, info.size

    def pack_size(self, pack_id: bytes) -> int:
        try:
            return self.store.stat(keys.pack_key(pack_id)).size
        except ObjectNotFound:
            raise PackMissing(pack=pack_id.hex()) from None

    def read_pack(self, pack_id: bytes) -> bytes:
        """A whole pack (verify, repacking); no larger than any pack casbackup writes."""
        try:
            return get_at_most(self.store, keys.pack_key(pack_id), MAX_PACK_BYTES, "pack")
        except ObjectNotFound:
            raise PackMissing(pack=pack_id.hex()) from None

    def read_trailer(self, pack_id: bytes, size: int | None = None) -> list[PackEntry]:
        """The pack's chunk index, from at most two ranged reads of its tail."""
        name = pack_id.hex()
        key = keys.pack_key(pack_id)
        if size is None:
            size = self.pack_size(pack_id)
        if size > MAX_PACK_BYTES:
            raise PackCorrupt(
                pack=name, detail=f"{size} bytes, more than any pack casbackup writes"
            )
        probe = min(size, TRAILER_PROBE)
        try:
            tail = self.store.get(key, size - probe, probe)
        except ObjectNotFound:
            raise PackMissing(pack=name) from None
        if len(tail) != probe:
            raise PackCorrupt(
                pack=name, detail=f"read {len(tail)} of {probe} tail bytes (truncated)"
            )
        trailer_length, digest = parse_footer(tail[-FOOTER_SIZE:], size, name)
        needed = trailer_length + FOOTER_SIZE
        if needed <= probe:
            trailer = tail[probe - needed : probe - FOOTER_SIZE]
        else:
            trailer = self.store.get(key, size - needed, trailer_length)
            if len(trailer) != trailer_length:
                raise PackCorrupt(pack=name, detail="trailer truncated")
        return parse_trailer(trailer, digest, size, name)

    def delete_pack(self, pack_id: bytes) -> None:
        self.store.delete(keys.pack_key(pack_id))

    # --- manifests -----------------------------------------------------------

    def list_backup_names(self) -> list[str]:
        return list(self.list_backups())

    def list_backups(self) -> dict[str, ManifestStamp]:
        """Committed backups: their manifests' stamps by name. Other objects there are reported.

        casbackup never writes such an object (backup names are checked before
        a manifest is), so it references nothing and no command should stop
        for it. The stamp tells a manifest another host wrote under a name it
        deleted before from the one this host's catalog indexed.
        """
        found = {}
        for info in self.store.list(keys.MANIFESTS_PREFIX):
            try:
                found[keys.backup_name_from_key(info.key)] = ManifestStamp.of(info)
            except IntegrityError:
                self._stray(info.key, "manifest")
        return found

    def manifest_stamp(self, name: str) -> ManifestStamp | None:
        """The stamp ``list_backups`` will show for ``name``: one listing, as sync takes it.

        From a listing, not a HEAD: what the catalog records at commit must
        compare equal to what later listings give, on every S3-compatible
        server, or every command would take the backup for replaced.
        """
        key = keys.manifest_key(name)
        return next((ManifestStamp.of(i) for i in self.store.list(key) if i.key == key), None)

    def _stray(self, key: str, kind: str) -> None:
        if key not in self._strays:
            self._strays.add(key)
            log.warning("ignored %r: not a name casbackup gives a %s", key, kind)

    def manifest_info(self, name: str) -> ObjectInfo:
        try:
            return self.store.stat(keys.manifest_key(name))
        except ObjectNotFound:
            raise BackupNotFound(name=name) from None

    def has_manifest(self, name: str) -> bool:
        try:
            self.store.stat(keys.manifest_key(name))
        except ObjectNotFound:
            return False
        return True

    def write_manifest(self, manifest: Manifest) -> bytes:
        """Commit a backup. Returns the encoded manifest (its digest goes in the catalog)."""
        if manifest.repository_id != self.id:
            raise RepositoryError(detail="manifest was built for another repository")
        if self.has_manifest(manifest.name):
            raise BackupExists(name=manifest.name)
        data = manifest_codec.encode(manifest)
        try:
            # Create-if-absent, not a put after the check above: two hosts (two
            # catalogs) committing the same name at once, as cron's default
            # names make likely, must not both succeed with one manifest lost.
            self.store.create(keys.manifest_key(manifest.name), data)
        except ObjectExists:
            raise BackupExists(name=manifest.name) from None
        return data

    def manifest_object(self, name: str) -> bytes:
        """A manifest's stored bytes; one larger than any manifest can be is refused unread.

        The size comes first (a stat, or a HEAD on S3): a 3 GB sparse file
        under manifests/ must not be read into memory to find out.
        """
        return manifest_object(self.store, name)

    def read_manifest(self, name: str, memo: manifest_codec.DecodeMemo | None = None) -> Manifest:
        """A backup's manifest; ``memo``: shared with the other manifests a caller reads."""
        manifest = manifest_codec.decode(self.manifest_object(name), name, memo)
        if manifest.repository_id != self.id:
            raise RepositoryError(
                detail=f"manifest {name} belongs to repository {manifest.repository_id}"
            )
        return manifest

    def delete_manifest(self, name: str) -> None:
        self.store.delete(keys.manifest_key(name))

    def refuse_changed_config(self, recorded: str) -> None:
        """Raise ``ConfigChanged`` if a manifest records ``recorded``, the catalog's id, not ours.

        For a catalog that names another repository than the config: when the
        manifests agree with the catalog, the config is the object that changed.
        """
        manifests = _readable_manifests(self.store, limit=1)
        if manifests and manifests[0].repository_id == recorded != self.id:
            raise ConfigChanged(
                location=self.store.describe(),
                config_id=self.id,
                name=manifests[0].name,
                recorded=recorded,
            )


def manifest_object(store: ObjectStore, name: str) -> bytes:
    """``Repository.manifest_object``, for a store whose config may be missing."""
    key = keys.manifest_key(name)
    limit = manifest_codec.MAX_MANIFEST_OBJECT_BYTES
    try:
        if store.stat(key).size > limit:
            raise ObjectTooLarge(key=key, limit=limit, what="manifest")
        return get_at_most(store, key, limit, "manifest")
    except ObjectNotFound:
        raise BackupNotFound(name=name) from None


# --- a store that lost its config --------------------------------------------------


def _refuse_config(store: ObjectStore) -> None:
    try:
        store.stat(keys.CONFIG_KEY)
    except ObjectNotFound:
        return
    raise RepositoryExists(location=store.describe())


def _describe_remains(store: ObjectStore) -> str:
    """Which of manifests/ and packs/ hold any object ('' if neither): one short LIST each."""
    held = [
        prefix
        for prefix in (keys.MANIFESTS_PREFIX, keys.PACKS_PREFIX)
        if next(iter(store.list(prefix)), None) is not None
    ]
    return " and ".join(held)


def _refuse_remains(store: ObjectStore) -> None:
    """Raise ``ConfigMissing`` if a store without a config still holds packs or manifests."""
    remains = _describe_remains(store)
    if not remains:
        return
    manifests = _readable_manifests(store, limit=1)
    if manifests:
        first = manifests[0]
        advice = (
            f"its id, {first.repository_id}, is recorded in manifest {first.name}: "
            "`casbackup init --recover` writes the config back with it "
            '(docs/operations.md, "A lost config object"); '
            "plain `casbackup init` is refused, a new id would cut off every backup"
        )
    else:
        advice = (
            "no readable manifest records its id, so no backup can be reached through it: "
            "restore `config` from a copy, or move manifests/ and packs/ away to start anew"
        )
    raise ConfigMissing(location=store.describe(), remains=remains, advice=advice)


def _readable_manifests(store: ObjectStore, limit: int | None = None) -> list[Manifest]:
    """Manifests that decode and record an id of the form ``init`` writes, in name order.

    The others are skipped: the id becomes a catalog file name, so a damaged
    or hostile manifest must not choose it.
    """
    found: list[Manifest] = []
    for info in store.list(keys.MANIFESTS_PREFIX):
        if limit is not None and len(found) >= limit:
            break
        try:
            name = keys.backup_name_from_key(info.key)
            manifest = manifest_codec.decode(manifest_object(store, name), name)
        except (BackupNotFound, RepositoryError):
            continue
        if _REPOSITORY_ID.match(manifest.repository_id):
            found.append(manifest)
    return found
