"""How restore groups parts into staging batches (one fetch per batch)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from casbackup import restore
from casbackup.repo import manifest as mf


def part(index: int, size: int, files: int) -> mf.Part:
    return mf.Part(
        name=f"all_{index}_{index}_0",
        partition_id="all",
        min_block=index,
        max_block=index,
        level=0,
        rows=1,
        bytes=size,
        disk="default",
        files=[mf.PartFile(path=f"f{n}.bin", file_id=bytes(32), size=0) for n in range(files)],
    )


@given(
    st.lists(
        st.tuples(st.integers(0, 400 * 1024 * 1024), st.integers(1, 600)), min_size=0, max_size=40
    )
)
def test_batches_keep_order_and_bounds(shape: list[tuple[int, int]]) -> None:
    parts = [part(i, size, files) for i, (size, files) in enumerate(shape)]
    batches = list(restore.staging_batches(parts))
    assert [p for batch in batches for p in batch] == parts
    for batch in batches:
        assert batch
        if len(batch) > 1:  # only a part too big on its own may exceed a bound
            assert sum(p.bytes for p in batch) <= restore.STAGE_BATCH_BYTES
            assert sum(len(p.files) for p in batch) <= restore.STAGE_BATCH_FILES
