"""Read planning: neighbours coalesce into few ranged reads, bounded in size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from casbackup.repo.reader import ChunkLocation, plan_reads

P1, P2 = b"\x01" * 32, b"\x02" * 32


def loc(pack: bytes, offset: int, length: int) -> ChunkLocation:
    return ChunkLocation(pack, offset, length, length, 0)


def test_neighbours_coalesce_and_gaps_split() -> None:
    locations = {
        b"a" * 32: loc(P1, 8, 100),
        b"b" * 32: loc(P1, 108, 100),  # adjacent
        b"c" * 32: loc(P1, 5_000_000, 10),  # far away
        b"d" * 32: loc(P2, 8, 50),  # other pack
    }
    reads = plan_reads(locations, max_gap=1 << 20, max_span=8 << 20)
    assert [(r.pack_id, r.start, r.end, len(r.chunks)) for r in reads] == [
        (P1, 8, 208, 2),
        (P1, 5_000_000, 5_000_010, 1),
        (P2, 8, 58, 1),
    ]


def test_span_limit_splits_long_runs() -> None:
    locations = {bytes([i]) * 32: loc(P1, 8 + i * 1000, 1000) for i in range(100)}
    reads = plan_reads(locations, max_gap=0, max_span=10_000)
    assert len(reads) == 10 and all(r.end - r.start <= 10_000 for r in reads)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10**7), st.integers(1, 5 * 10**6)), max_size=60
    ),
    st.integers(0, 2 << 20),
    st.integers(1, 16 << 20),
)
def test_every_chunk_is_served_once_inside_its_read(
    items: list[tuple[int, int, int]], gap: int, span: int
) -> None:
    locations = {
        i.to_bytes(32, "big"): loc(bytes([p]) * 32, o, n) for i, (p, o, n) in enumerate(items)
    }
    reads = plan_reads(locations, max_gap=gap, max_span=span)
    served = [cid for r in reads for cid, _ in r.chunks]
    assert sorted(served) == sorted(locations)
    for r in reads:
        for _, location in r.chunks:
            assert location.pack_id == r.pack_id
            assert r.start <= location.offset and location.offset + location.length <= r.end
