"""Pack files: many stored chunks in one immutable object, with a trailer that indexes them.

Layout (all integers little-endian; spec in schema/FORMAT.md)::

    "CASPACK1"                        8-byte magic
    blob*                             stored chunks, back to back (after optional zero
                                      padding that keeps a pack from being named like a condemned one)
    trailer                           u32 count, then count x entry
        entry = id[32] offset:u64 length:u32 raw_size:u32 compression:u8   (49 bytes)
    footer                            trailer_length:u32  blake3(trailer)[32]  "CASPEND1"

A pack is named by the BLAKE3 digest of all its bytes, so a full read proves
the pack; the footer's own digest lets a reader trust a trailer it fetched with
one ranged read, without the rest. Packs are never modified: garbage collection
copies live chunks into new packs and deletes the old one.

Everything parsed here comes from storage and is treated as hostile: counts,
offsets and lengths are checked against the pack's real size before use.
"""

from __future__ import annotations

import struct
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

import blake3

from casbackup.errors import PackCorrupt
from casbackup.repo.chunker import DIGEST_SIZE, MAX_CHUNK_SIZE
from casbackup.repo.compression import Compression

MAGIC = b"CASPACK1"
END_MAGIC = b"CASPEND1"
_ENTRY = struct.Struct("<32sQIIB")
_COUNT = struct.Struct("<I")
_FOOTER = struct.Struct(f"<I{DIGEST_SIZE}s8s")
FOOTER_SIZE = _FOOTER.size
ENTRY_SIZE = _ENTRY.size
# The smallest valid pack: magic, an empty trailer, footer.
MIN_PACK_SIZE = len(MAGIC) + _COUNT.size + FOOTER_SIZE
# A trailer longer than this is refused outright (~ 85 million entries).
MAX_TRAILER_SIZE = 4 * 1024 * 1024 * 1024 - 1
# No pack casbackup writes is larger: writers seal a pack once it reaches
# [repository] pack_size_mb (at most 512) and a pack overshoots that by at most
# one compressed chunk (under 17 MiB). A bigger object under packs/ is damage
# or not casbackup's, and is refused before it is read (a sparse or hostile
# object must not cost its size in memory).
MAX_PACK_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one stored chunk lies inside its pack."""

    chunk_id: bytes
    offset: int
    length: int
    raw_size: int
    compression: Compression

    @property
    def end(self) -> int:
        return self.offset + self.length


class PackBuilder:
    """Accumulates stored chunks in memory until the pack is big enough to upload.

    Blobs are kept as a list and never joined: growing one bytearray
    re-copied the whole buffer on every reallocation, with the GIL held (the
    bottleneck of a two-thread backup), and joining them when sealed copied
    every byte once more into fresh memory; the store writes the pieces.
    """

    def __init__(self) -> None:
        self._blobs: list[bytes] = [MAGIC]
        self._size = len(MAGIC)
        self._entries: list[PackEntry] = []
        self._ids: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._ids

    def add(self, chunk_id: bytes, blob: bytes, raw_size: int, compression: Compression) -> None:
        if chunk_id in self._ids:
            return
        self._entries.append(PackEntry(chunk_id, self._size, len(blob), raw_size, compression))
        self._blobs.append(blob)
        self._size += len(blob)
        self._ids.add(chunk_id)

    def finish(self, avoid: AbstractSet[bytes] = frozenset()) -> SealedPack:
        """Seal the pack; the builder is spent.

        Never a pack named in ``avoid`` (condemned packs: a byte-identical
        re-creation would silently rely on a pack gc is about to delete); zero
        bytes after the header, which no entry covers, make it a new pack.
        """
        blobs, self._blobs = self._blobs, []
        for pad in range(len(avoid) + 1):
            entries = (
                [replace(e, offset=e.offset + pad) for e in self._entries] if pad else self._entries
            )
            trailer = encode_trailer(entries)
            footer = _FOOTER.pack(len(trailer), blake3.blake3(trailer).digest(), END_MAGIC)
            pieces = (blobs[0], bytes(pad), *blobs[1:], trailer, footer)
            hasher = blake3.blake3()
            for piece in pieces:
                hasher.update(piece)
            pack_id = hasher.digest()
            if pack_id not in avoid:
                break
        return SealedPack(pack_id, pieces, entries)


@dataclass(frozen=True, slots=True)
class SealedPack:
    """A finished pack, kept as the pieces it is made of.

    Stores write the pieces one after the other (``ObjectStore.put_pieces``);
    joining 32 MiB first would copy every byte once more into fresh memory.
    """

    pack_id: bytes
    pieces: tuple[bytes, ...]
    entries: list[PackEntry]

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self.pieces)


def encode_trailer(entries: list[PackEntry]) -> bytes:
    out = bytearray(_COUNT.pack(len(entries)))
    for e in entries:
        out += _ENTRY.pack(e.chunk_id, e.offset, e.length, e.raw_size, int(e.compression))
    return bytes(out)


def parse_footer(footer: bytes, pack_size: int, pack: str) -> tuple[int, bytes]:
    """Return (trailer length, trailer digest) from the last FOOTER_SIZE bytes of a pack."""
    if pack_size < MIN_PACK_SIZE or len(footer) != FOOTER_SIZE:
        raise PackCorrupt(pack=pack, detail=f"truncated: {pack_size} bytes is too short for a pack")
    trailer_length, digest, end_magic = _FOOTER.unpack(footer)
    if end_magic != END_MAGIC:
        raise PackCorrupt(pack=pack, detail="footer magic missing (truncated or not a pack)")
    if trailer_length < _COUNT.size or trailer_length > pack_size - len(MAGIC) - FOOTER_SIZE:
        raise PackCorrupt(
            pack=pack, detail=f"trailer length {trailer_length} does not fit the pack"
        )
    return trailer_length, digest


def parse_trailer(trailer: bytes, digest: bytes, pack_size: int, pack: str) -> list[PackEntry]:
    """Decode and check a trailer against its digest and the pack's geometry."""
    if blake3.blake3(trailer).digest() != digest:
        raise PackCorrupt(pack=pack, detail="trailer digest mismatch")
    (count,) = _COUNT.unpack_from(trailer)
    if _COUNT.size + count * ENTRY_SIZE != len(trailer):
        raise PackCorrupt(
            pack=pack, detail=f"trailer holds {len(trailer)} bytes, not {count} entries"
        )
    data_end = pack_size - FOOTER_SIZE - len(trailer)
    entries: list[PackEntry] = []
    position = len(MAGIC)
    for index in range(count):
        cid, offset, length, raw_size, kind = _ENTRY.unpack_from(
            trailer, _COUNT.size + index * ENTRY_SIZE
        )
        if offset < position or offset + length > data_end:
            raise PackCorrupt(
                pack=pack,
                detail=f"entry {index} [{offset}, +{length}) lies outside the data area or overlaps",
            )
        if raw_size > MAX_CHUNK_SIZE:
            raise PackCorrupt(pack=pack, detail=f"entry {index} claims raw size {raw_size}")
        try:
            compression = Compression(kind)
        except ValueError:
            raise PackCorrupt(
                pack=pack, detail=f"entry {index} has unknown compression {kind}"
            ) from None
        if compression == Compression.NONE and length != raw_size:
            raise PackCorrupt(pack=pack, detail=f"entry {index}: raw entry with length != raw size")
        entries.append(PackEntry(cid, offset, length, raw_size, compression))
        position = offset + length
    return entries


def parse_pack(data: bytes, pack: str) -> list[PackEntry]:
    """Parse a whole pack held in memory (the repack and --read-data paths)."""
    if not data.startswith(MAGIC):
        raise PackCorrupt(pack=pack, detail="header magic missing")
    trailer_length, digest = parse_footer(data[-FOOTER_SIZE:], len(data), pack)
    trailer_start = len(data) - FOOTER_SIZE - trailer_length
    return parse_trailer(data[trailer_start : len(data) - FOOTER_SIZE], digest, len(data), pack)
