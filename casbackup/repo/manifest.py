"""Backup manifests: one immutable object per backup, and the commit point of a backup.

A manifest holds everything needed to restore its backup given only the pack
trailers: the databases and tables with their CREATE statements, every part with
its files, and for every distinct file its size and ordered chunk ids. Where a
chunk lives is *not* recorded here, because garbage collection moves chunks
between packs and manifests are never rewritten; the chunk index (catalog, or
the trailers of all packs) answers that.

Encoding: ``"CASMANI1" | blake3(body)[32] | body``, ``body = zstd(msgpack(doc))``.
The document is validated field by field on the way in (it comes from storage,
so it is untrusted): names and paths that will become filesystem paths are
checked here, so restore never has to wonder about ``../``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import blake3
import msgpack
import zstandard
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from casbackup.errors import ManifestCorrupt, RepositoryError, UnsafePath, UnsupportedFormat
from casbackup.repo.chunker import DIGEST_SIZE, MAX_CHUNK_SIZE, file_id

FORMAT_VERSION = 1
MAGIC = b"CASMANI1"
HEADER_SIZE = len(MAGIC) + DIGEST_SIZE
MiB = 1024 * 1024
# A manifest whose document (msgpack, before compression) is larger than this
# is refused by readers and never written: the limit of the format since
# release 1, so every backup ever committed stays readable. What it costs is
# per file, not per byte of data: about 240 bytes of document per part file
# (its entry and its file's chunk list of one id), so 4 GiB is some 18
# million part files in one backup. Decoding costs about ten bytes of memory
# per document byte (a 100 MiB document peaks near 1 GiB); the document is
# streamed into the unpacker, so a small hostile object costs what its
# document holds, not what its decompressor could make of it.
MAX_MANIFEST_BYTES = 4 * 1024 * MiB
# The stored object: header plus zstd's worst case for an incompressible
# document (ZSTD_compressBound: n + n/256 + a little), checked before reading.
MAX_MANIFEST_OBJECT_BYTES = HEADER_SIZE + MAX_MANIFEST_BYTES + MAX_MANIFEST_BYTES // 256 + MiB
# msgpack limits: no string of a manifest comes near 16 MiB (ClickHouse parses
# statements of max_query_size, 256 KiB by default); binaries are digests and
# checksums; maps are models of at most ~20 fields. The unpacker holds at most
# its buffer of the document at a time, never the whole of it.
MAX_STRING_BYTES = 16 * MiB
# Arrays: the unpacker allocates a list of the announced length before it
# reads the items. The longest legitimate ones list chunk ids or files, 34
# bytes of the document or more each, so none has more items than this.
MAX_ARRAY_ITEMS = MAX_MANIFEST_BYTES // 32
_MAX_BIN_BYTES = 64
_MAX_MAP_ENTRIES = 64
_UNPACK_BUFFER = 2 * MAX_STRING_BYTES
_READ_SIZE = MiB

# ClickHouse part names: partition id, block numbers, level, mutation, joined by
# '_' (partition ids may hold '-', and begin with it: a negative integer key's
# partition id is the number, so `PARTITION BY k` with k = -1 writes `-1_5_5_0`).
# ATTACH PART refuses '/' and the prefixes 'attaching_'/'deleting_' (see CLICKHOUSE.md).
_PART_NAME = re.compile(r"^(?=.{1,255}$)-?[A-Za-z0-9][A-Za-z0-9_-]*$")
_PATH_COMPONENT = re.compile(r"^[^/\x00]{1,255}$")


def safe_relative_path(path: str) -> str:
    """A path inside a part directory: relative, normalised, no '..', no NUL."""
    if not path or len(path) > 1024:
        raise UnsafePath(path=path[:80], reason="empty or too long")
    if path.startswith("/"):
        raise UnsafePath(path=path, reason="absolute path")
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise UnsafePath(path=path, reason="'..', '.' or empty component")
        if not _PATH_COMPONENT.match(component):
            raise UnsafePath(path=path, reason="NUL byte or over-long component")
    return path


def safe_part_name(name: str) -> str:
    if not _PART_NAME.match(name) or name.startswith(("attaching_", "deleting_", "tmp")):
        raise UnsafePath(path=name, reason="not a ClickHouse part name")
    return name


def one_tree(paths: list[str]) -> None:
    """Paths that can all be written under one directory: none twice, none both a file and a directory.

    Each path is safe on its own (``safe_relative_path``); together they
    must be too, or a restore would meet its own file as "File exists" and
    blame the disk for damage in the backup.
    """
    files = set(paths)
    if len(files) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"path {twice!r} listed twice")
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory in files:
                raise ValueError(f"{directory!r} is a file and the directory of {path!r}")


def _digest(value: bytes) -> bytes:
    if len(value) != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes, got {len(value)}")
    return value


def _optional_checksum(value: bytes | None) -> bytes | None:
    if value is not None and len(value) != 16:
        raise ValueError("ClickHouse checksum must be 16 bytes")
    return value


Digest = Annotated[bytes, AfterValidator(_digest)]
RelativePath = Annotated[str, AfterValidator(safe_relative_path)]
PartName = Annotated[str, AfterValidator(safe_part_name)]
NonNegative = Annotated[int, Field(ge=0, lt=2**63)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=_Model)

# The context of a manifest assembled by DecodeMemo: its parts and file
# contents are instances validated on their own already, and pydantic runs a
# model's after-validators again on every instance it is handed.
_MEMO_CONTEXT = {"parts and files validated": True}


def _memoized(info: ValidationInfo) -> bool:
    return info.context is _MEMO_CONTEXT


class FileContent(_Model):
    """The content of one distinct file: its chunks, in order."""

    id: Digest
    size: NonNegative
    chunks: list[Digest]

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> FileContent:
        if _memoized(info):
            return self
        if file_id(self.chunks) != self.id:
            raise ValueError("file id does not match its chunk list")
        if len(self.chunks) > self.size or self.size > len(self.chunks) * MAX_CHUNK_SIZE:
            raise ValueError(f"size {self.size} impossible for {len(self.chunks)} chunks")
        return self


class PartFile(_Model):
    """One file of a part as it was on disk."""

    path: RelativePath
    file_id: Digest
    size: NonNegative
    mode: Annotated[int, Field(ge=0, le=0o7777)] = 0o644
    # Identity of the inode it was read from and ClickHouse's own checksum of
    # it (from checksums.txt): together they let the next backup skip reading
    # a file that has not changed.
    dev: NonNegative = 0
    ino: NonNegative = 0
    mtime_ns: NonNegative = 0
    ch_checksum: Annotated[bytes | None, AfterValidator(_optional_checksum)] = None


class PartFingerprint(_Model):
    """``count()`` and the sum of row hashes of a part, as ClickHouse computed them at backup time."""

    rows: NonNegative
    hash: Annotated[int, Field(ge=0, lt=2**64)]
    # Which row expression was summed (clickhouse/fingerprint.py, RowHash.id);
    # None: recorded before fingerprints named it (the legacy expression).
    expression_id: str | None = Field(default=None, pattern="^[0-9a-f]{32}$")


class Part(_Model):
    name: PartName
    partition_id: str = Field(max_length=255)
    partition: str = Field(
        default="", max_length=4096
    )  # the partition's value, as system.parts shows it
    min_block: NonNegative
    max_block: NonNegative
    level: NonNegative
    mutation: NonNegative = 0
    rows: NonNegative
    bytes: NonNegative
    disk: str = Field(default="default", max_length=255)
    files: list[PartFile]
    fingerprint: PartFingerprint | None = None

    @model_validator(mode="after")
    def _files_form_a_tree(self, info: ValidationInfo) -> Part:
        if _memoized(info):
            return self
        one_tree([f.path for f in self.files])
        return self


def part_content_id(part: Part) -> bytes:
    """What a part holds, independent of its name.

    The file id of its checksums.txt, which lists the size and hash of every
    data file: equal checksums.txt, equal data. Parts without one (very old
    formats) are identified by all their paths and contents.
    """
    for f in part.files:
        if f.path == "checksums.txt":
            return f.file_id
    h = blake3.blake3(b"casbackup.part.v1\x00")
    for f in sorted(part.files, key=lambda f: f.path):
        h.update(f.path.encode() + b"\x00" + f.file_id)
    return h.digest()


class Database(_Model):
    name: str = Field(min_length=1, max_length=1024)
    engine: str = Field(max_length=255)
    create_sql: str


def part_file_bytes(tables: Iterable[Table]) -> int:
    """The sizes of every part file of these tables, added up (filesets not counted)."""
    return sum(pf.size for table in tables for part in table.parts for pf in part.files)


class Table(_Model):
    database: str = Field(min_length=1, max_length=1024)
    name: str = Field(min_length=1, max_length=1024)
    engine: str = Field(max_length=255)
    create_sql: str
    uuid: str | None = None
    has_data: bool  # MergeTree family: parts follow; other engines: schema only
    rows: NonNegative = 0
    bytes: NonNegative = 0
    # Tables this one reads from or writes to (views, dictionaries): restore order.
    depends_on: list[tuple[str, str]] = Field(default_factory=list)
    parts: list[Part] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parts_named_once(self) -> Table:
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.database}.{self.name}: a part name appears twice")
        return self

    @property
    def qualified(self) -> str:
        return f"{self.database}.{self.name}"


class ServerObject(_Model):
    """A server-level object recorded as the SQL that recreates it (user, role, function...)."""

    kind: str = Field(max_length=64)  # USER, ROLE, GRANT, FUNCTION, NAMED COLLECTION ...
    name: str = Field(default="", max_length=1024)
    create_sql: str
    storage: str = Field(default="", max_length=64)  # access storage: users_xml, local_directory...


class ServerFile(_Model):
    """A file from a server directory (configs, access storage), stored like part files."""

    path: RelativePath
    file_id: Digest
    size: NonNegative
    mode: Annotated[int, Field(ge=0, le=0o7777)] = 0o644


class FileSet(_Model):
    """A directory's regular files, and where they came from."""

    source: str = Field(max_length=4096)
    files: list[ServerFile] = Field(default_factory=list)

    @model_validator(mode="after")
    def _files_form_a_tree(self) -> FileSet:
        one_tree([f.path for f in self.files])
        return self


class Stats(_Model):
    logical_bytes: NonNegative = 0
    read_bytes: NonNegative = 0
    new_bytes: NonNegative = 0  # bytes added to the store (packs, compressed) by this backup
    new_raw_bytes: NonNegative = 0  # the same chunks before compression
    new_chunks: NonNegative = 0
    duration_ms: NonNegative = 0


class Manifest(_Model):
    version: int = FORMAT_VERSION
    name: str = Field(min_length=1, max_length=128)
    repository_id: str
    started_at: datetime
    finished_at: datetime
    hostname: str = Field(max_length=255)
    tool_version: str = Field(max_length=64)
    clickhouse_version: str = Field(max_length=64)
    databases: list[Database]
    tables: list[Table]
    files: list[FileContent]
    stats: Stats = Field(default_factory=Stats)
    # Beyond table data (create --rbac / --configs): absent in backups without them.
    access: list[ServerObject] = Field(default_factory=list)
    access_files: FileSet | None = None
    functions: list[ServerObject] = Field(default_factory=list)
    named_collections: list[ServerObject] = Field(default_factory=list)
    configs: FileSet | None = None
    partitions: list[str] = Field(
        default_factory=list
    )  # create --partitions: only these were backed up

    @model_validator(mode="after")
    def _references_resolve(self) -> Manifest:
        sizes = {f.id: f.size for f in self.files}
        if len(sizes) != len(self.files):
            raise ValueError("file table lists a file twice")
        if len({d.name for d in self.databases}) != len(self.databases):
            raise ValueError("a database is listed twice")
        if len({(t.database, t.name) for t in self.tables}) != len(self.tables):
            raise ValueError("a table is listed twice")
        # Catalogs sum these in SQL, where a total beyond 64 bits is an error
        # (SQLite's "integer overflow") of every query that lists backups.
        for field in ("rows", "bytes"):
            if sum(getattr(t, field) for t in self.tables) >= 2**63:
                raise ValueError(f"the {field} of the tables add up to more than 2^63 - 1")
        for fileset in (self.access_files, self.configs):
            if fileset is None:
                continue
            for sf in fileset.files:
                if sizes.get(sf.file_id) != sf.size:
                    raise ValueError(
                        f"{fileset.source}: {sf.path}: file id missing from the file table or size differs"
                    )
        for table in self.tables:
            for part in table.parts:
                for pf in part.files:
                    if sizes.get(pf.file_id) != pf.size:
                        raise ValueError(
                            f"{table.qualified} part {part.name} file {pf.path}: "
                            "file id missing from the file table or size differs"
                        )
        # Summed in SQL too (the catalog's check of what each backup holds, at every gc):
        # one file content that many part files share can add up past 64 bits.
        if self.part_file_bytes() >= 2**63:
            raise ValueError("the sizes of the part files add up to more than 2^63 - 1")
        return self

    def part_file_bytes(self) -> int:
        """The backup's logical size, from its parts (``part_file_bytes``).

        What ``stats.logical_bytes`` says too, as every writer computes it
        from the same parts; but a reader can check the parts and not the
        stat, so what depends on the size (the catalog's record, which gc
        checks the catalog's part file rows against) takes it from here.
        """
        return part_file_bytes(self.tables)

    def file_table(self) -> dict[bytes, FileContent]:
        return {f.id: f for f in self.files}

    def chunk_ids(self) -> set[bytes]:
        return {c for f in self.files for c in f.chunks}


def encode(manifest: Manifest) -> bytes:
    """The stored form; refused (never committed) beyond the size readers accept."""
    doc = manifest.model_dump(mode="python")
    doc["started_at"] = manifest.started_at.isoformat()
    doc["finished_at"] = manifest.finished_at.isoformat()
    packed = msgpack.packb(doc, use_bin_type=True)
    if len(packed) > MAX_MANIFEST_BYTES:
        raise RepositoryError(
            detail=f"the manifest of backup {manifest.name} would be {len(packed)} bytes, more "
            f"than the {MAX_MANIFEST_BYTES} readers accept; back up fewer tables at a time"
        )
    body = zstandard.ZstdCompressor(level=3).compress(packed)
    return MAGIC + blake3.blake3(body).digest() + body


class DecodeMemo:
    """Parts and file contents already validated, for decoding many manifests of one repository.

    Consecutive backups share nearly all their parts and files, and validating
    them (paths, digests, file ids against chunk lists) is most of what
    decoding a manifest costs: a reader of every manifest (verify) would
    repeat it per backup kept (and hold a copy of each per backup). A part or
    file content encoded exactly as one validated before (the same msgpack
    bytes) is that frozen object, shared; anything else is validated as
    ``decode`` alone would, and a manifest that fails in any way is decoded
    again without the memo, so its error is exactly ``decode``'s. Holds the
    distinct parts and file contents seen, and their encoded forms.
    """

    def __init__(self) -> None:
        self.parts: dict[bytes, Part] = {}  # by its encoded form in the document
        self.files: dict[bytes, FileContent] = {}


def decode(data: bytes | memoryview, name: str, memo: DecodeMemo | None = None) -> Manifest:
    view = memoryview(data)  # slices of it copy nothing
    if len(view) < HEADER_SIZE or view[: len(MAGIC)] != MAGIC:
        raise ManifestCorrupt(
            backup=name, detail="not a casbackup manifest (bad magic or truncated)"
        )
    if len(view) > MAX_MANIFEST_OBJECT_BYTES:
        raise ManifestCorrupt(backup=name, detail="larger than the size limit")
    body = view[HEADER_SIZE:]
    if blake3.blake3(body).digest() != view[len(MAGIC) : HEADER_SIZE]:
        raise ManifestCorrupt(backup=name, detail="digest mismatch (damaged in storage)")
    if memo is not None:
        try:
            manifest = _decode_with(memo, body, name)
        except MemoryError:
            raise
        except Exception:  # decoded again below, for decode's own error
            manifest = None
        if manifest is not None:
            return manifest
    doc = _unpack_document(body, name)
    if not isinstance(doc, dict):
        raise ManifestCorrupt(backup=name, detail="top level is not a map")
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(
            what=f"manifest {name}",
            found=version,
            supported=FORMAT_VERSION,
            advice="use the casbackup release that wrote it",
        )
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestCorrupt(backup=name, detail=_first_error(exc)) from None
    if manifest.name != name:
        raise ManifestCorrupt(
            backup=name, detail=f"stored under {name!r} but names itself {manifest.name!r}"
        )
    return manifest


def _decode_with(memo: DecodeMemo, body: memoryview, name: str) -> Manifest | None:
    """``decode``'s document through the memo; None where decode must judge it alone.

    The document is walked with msgpack's own unpacker, streamed as
    ``_unpack_document`` streams it; each part and file content is skipped
    over and looked up by its encoded bytes, so one seen before costs a
    lookup, not a decoding and a validation. One not seen before is decoded
    with ``decode``'s limits and validated alone, then remembered.
    """
    with zstandard.ZstdDecompressor().stream_reader(body) as reader:
        stream = _Recording(_Bounded(reader, MAX_MANIFEST_BYTES))
        unpacker = _unpacker(_UNPACK_BUFFER, stream)
        doc = _map(
            unpacker,
            tables=lambda: _map(
                unpacker, parts=lambda: _remembered(unpacker, stream, memo.parts, Part)
            ),
            files=lambda: _remembered(unpacker, stream, memo.files, FileContent),
        )
        if stream.count > unpacker.tell() or stream.read(1):
            return None
    if doc.get("version") != FORMAT_VERSION:
        return None
    manifest = Manifest.model_validate(doc, context=_MEMO_CONTEXT)
    return manifest if manifest.name == name else None


def _map(unpacker: msgpack.Unpacker, **arrays: Callable[[], Any]) -> dict[str, Any]:
    """The next map of the document; the arrays under the keys given are read item by item
    with their reader (a part or file content through the memo), every other value whole."""
    found: dict[str, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        item = arrays.get(key) if isinstance(key, str) else None
        if item is None:
            found[key] = unpacker.unpack()
        else:
            found[key] = [item() for _ in range(unpacker.read_array_header())]
    return found


def _remembered(
    unpacker: msgpack.Unpacker, stream: _Recording, cache: dict[bytes, _M], model: type[_M]
) -> _M:
    start = unpacker.tell()
    unpacker.skip()
    encoded = stream.take(start, unpacker.tell())
    found = cache.get(encoded)
    if found is None:
        one = _unpacker(len(encoded))
        one.feed(encoded)
        found = cache[encoded] = model.model_validate(one.unpack())
    return found


class _Recording:
    """A reader that keeps what it read, so that an object the unpacker skipped can be taken."""

    def __init__(self, stream: _Bounded) -> None:
        self.stream = stream
        self.kept = bytearray()
        self.base = 0  # the document offset of kept[0]

    @property
    def count(self) -> int:
        return self.stream.count

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.kept += data
        return data

    def take(self, start: int, end: int) -> bytes:
        """The document's bytes [start, end); what comes before ``end`` is not kept for long."""
        encoded = bytes(self.kept[start - self.base : end - self.base])
        if end - self.base > _KEEP:  # dropped now and then, not per object: a move of the rest
            del self.kept[: end - self.base]
            self.base = end
        return encoded


_KEEP = 8 * MiB


def _unpacker(buffer_size: int, file_like: Any = None) -> msgpack.Unpacker:
    """The unpacker of a manifest's document, with the limits every reader applies."""
    return msgpack.Unpacker(
        file_like,
        raw=False,
        strict_map_key=True,
        read_size=_READ_SIZE,
        max_buffer_size=max(buffer_size, _UNPACK_BUFFER),
        max_str_len=MAX_STRING_BYTES,
        max_bin_len=_MAX_BIN_BYTES,
        max_map_len=_MAX_MAP_ENTRIES,
        max_array_len=MAX_ARRAY_ITEMS,
        max_ext_len=0,
    )


class _TooLarge(Exception):
    pass


class _Bounded:
    """A decompressing reader that refuses to yield more than ``limit`` bytes in all."""

    def __init__(self, reader: zstandard.ZstdDecompressionReader, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        want = _READ_SIZE if size < 0 else min(size, _READ_SIZE)
        data = self.reader.read(want)
        self.count += len(data)
        if self.count > self.limit:
            raise _TooLarge()
        return data


def _unpack_document(body: memoryview, name: str) -> Any:
    """The one msgpack object the body decompresses to, streamed rather than decompressed whole.

    A hostile body can be a small valid document followed by gigabytes of
    zeros (75 KB of zstd): the unpacker sees the document, then at most one
    read beyond it, which must be empty.
    """
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            stream = _Bounded(reader, MAX_MANIFEST_BYTES)
            unpacker = _unpacker(_UNPACK_BUFFER, stream)
            doc = unpacker.unpack()
            if stream.count > unpacker.tell() or stream.read(1):
                raise ManifestCorrupt(backup=name, detail="msgpack: extra data after the document")
            return doc
    except _TooLarge:
        raise ManifestCorrupt(
            backup=name, detail=f"decompresses to more than the {MAX_MANIFEST_BYTES}-byte limit"
        ) from None
    except zstandard.ZstdError as exc:
        raise ManifestCorrupt(backup=name, detail=f"zstd: {exc}") from None
    except msgpack.OutOfData:
        raise ManifestCorrupt(backup=name, detail="msgpack: truncated document") from None
    except (ValueError, msgpack.FormatError, msgpack.StackError) as exc:
        raise ManifestCorrupt(backup=name, detail=f"msgpack: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    # UnsafePath is not a ValueError, so pydantic lets it through as itself;
    # everything else is reported with where in the document it was found.
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    # pydantic prefixes what a validator's ValueError said with "Value error, ", and
    # a check of the whole document has no location.
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
