"""The behaviour every object store must have; each backend's test module subclasses this.

The repository layer relies on exactly these properties (see
``casbackup.store.base``), so a new backend that passes here is a drop-in.
"""

from __future__ import annotations

import threading
import time

import pytest

from casbackup.errors import InvalidKey, ObjectExists, ObjectNotFound
from casbackup.store.base import ObjectStore


class StoreConformance:
    """Subclasses provide a ``store`` fixture returning an empty store."""

    def test_put_get_roundtrip(self, store: ObjectStore) -> None:
        store.put("packs/ab/obj", b"hello world")
        assert store.get("packs/ab/obj") == b"hello world"

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.stat("empty").size == 0

    def test_put_accepts_bytearray_and_memoryview(self, store: ObjectStore) -> None:
        store.put("a", bytearray(b"xyz"))
        store.put("b", memoryview(b"0123456789")[2:5])
        assert store.get("a") == b"xyz"
        assert store.get("b") == b"234"

    def test_overwrite_replaces_whole_object(self, store: ObjectStore) -> None:
        store.put("k", b"a much longer first version")
        store.put("k", b"short")
        assert store.get("k") == b"short"

    def test_large_object(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * (40 * 1024 + 3)  # ~10 MiB, odd length
        store.put("big", data)
        assert store.stat("big").size == len(data)
        assert store.get("big") == data
        assert store.get("big", 5_000_000, 1_000_000) == data[5_000_000:6_000_000]

    def test_put_pieces_stores_their_concatenation(self, store: ObjectStore) -> None:
        head, body = b"CASPACK1", bytes(range(256)) * (8 * 1024 + 1)  # > 2 MiB in all
        pieces = [head, b"", body, bytearray(b"tail"), memoryview(body)[:4097], b"!"]
        store.put_pieces("packs/ab/joined", pieces)
        assert store.get("packs/ab/joined") == b"".join(pieces)
        store.put_pieces("packs/ab/small", [b"a", b"", b"bc"])
        assert store.get("packs/ab/small") == b"abc"

    def test_ranged_get(self, store: ObjectStore) -> None:
        store.put("r", b"0123456789")
        assert store.get("r", 2, 3) == b"234"
        assert store.get("r", 0, 10) == b"0123456789"
        assert store.get("r", 7) == b"789"
        assert store.get("r", 3, 0) == b""

    def test_ranged_get_past_end_is_short(self, store: ObjectStore) -> None:
        store.put("r", b"0123456789")
        assert store.get("r", 8, 10) == b"89"
        assert store.get("r", 10, 5) == b""
        assert store.get("r", 50, 5) == b""

    def test_missing_object(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound):
            store.get("nope")
        with pytest.raises(ObjectNotFound):
            store.get("nope", 1, 2)
        with pytest.raises(ObjectNotFound):
            store.stat("nope")

    def test_stat(self, store: ObjectStore) -> None:
        store.put("dir/s", b"12345")
        info = store.stat("dir/s")
        assert (info.key, info.size) == ("dir/s", 5)

    def test_an_object_written_again_has_another_version(self, store: ObjectStore) -> None:
        """What tells a manifest made again under its name from the one a catalog indexed.

        Listings and stat give the same version, and a new write under the key
        a new one, also at the same size. (The pause is for the local store,
        whose version holds a timestamp of the kernel clock's granularity;
        the delete and the next backup's create are minutes apart in use.)
        """
        store.create("manifests/b", b"first")
        first = store.stat("manifests/b")
        assert first.version
        assert [i.version for i in store.list("manifests/b")] == [first.version]
        store.delete("manifests/b")
        time.sleep(0.05)
        store.create("manifests/b", b"again")
        again = store.stat("manifests/b")
        assert again.size == first.size and again.version != first.version
        assert [i.version for i in store.list("manifests/")] == [again.version]

    def test_list_by_prefix_sorted(self, store: ObjectStore) -> None:
        for key in ["packs/b1/x", "packs/a0/y", "packs/a0/z", "manifests/m1", "config"]:
            store.put(key, key.encode())
        assert [i.key for i in store.list("packs/")] == ["packs/a0/y", "packs/a0/z", "packs/b1/x"]
        assert [i.key for i in store.list("packs/a")] == ["packs/a0/y", "packs/a0/z"]
        assert [i.key for i in store.list("manifests/")] == ["manifests/m1"]
        assert [i.key for i in store.list("")] == [
            "config",
            "manifests/m1",
            "packs/a0/y",
            "packs/a0/z",
            "packs/b1/x",
        ]
        assert {i.key: i.size for i in store.list("packs/b")} == {"packs/b1/x": len(b"packs/b1/x")}

    def test_list_empty_and_unmatched(self, store: ObjectStore) -> None:
        assert list(store.list("")) == []
        store.put("a/b", b"1")
        assert list(store.list("zzz/")) == []
        assert list(store.list("a/bc")) == []

    def test_list_partial_component_prefix(self, store: ObjectStore) -> None:
        store.put("manifests/2024-01", b"1")
        store.put("manifests/2024-02", b"2")
        store.put("manifests/2025-01", b"3")
        assert [i.key for i in store.list("manifests/2024")] == [
            "manifests/2024-01",
            "manifests/2024-02",
        ]

    def test_delete(self, store: ObjectStore) -> None:
        store.put("d/x", b"1")
        store.delete("d/x")
        with pytest.raises(ObjectNotFound):
            store.get("d/x")
        assert [i.key for i in store.list("d/")] == []

    def test_delete_missing_is_not_an_error(self, store: ObjectStore) -> None:
        store.delete("never/was")

    @pytest.mark.parametrize(
        "key",
        [
            "",
            "/abs",
            "a/../b",
            "..",
            "a//b",
            "a/./b",
            "a/",
            ".hidden",
            "a/.tmp-x",
            "sp ace",
            "a\x00b",
            "ü",
        ],
    )
    def test_invalid_keys_rejected(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(InvalidKey):
            store.put(key, b"x")
        with pytest.raises(InvalidKey):
            store.get(key)
        with pytest.raises(InvalidKey):
            store.delete(key)

    def test_concurrent_puts_of_same_key_leave_one_whole_object(self, store: ObjectStore) -> None:
        versions = [bytes([i]) * 200_000 for i in range(8)]
        threads = [threading.Thread(target=store.put, args=("race", v)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get("race") in versions
        assert [i.key for i in store.list("")] == ["race"]

    def test_create_if_absent(self, store: ObjectStore) -> None:
        store.create("locks/exclusive-gc", b"first")
        with pytest.raises(ObjectExists):
            store.create("locks/exclusive-gc", b"second")
        assert store.get("locks/exclusive-gc") == b"first"
        store.delete("locks/exclusive-gc")
        store.create("locks/exclusive-gc", b"third")
        assert store.get("locks/exclusive-gc") == b"third"

    def test_racing_creates_have_exactly_one_winner(self, store: ObjectStore) -> None:
        outcomes: list[bool] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            try:
                store.create("race-create", bytes([i]) * 1000)
                won = True
            except ObjectExists:
                won = False
            with lock:
                outcomes.append(won)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count(True) == 1
        assert len(set(store.get("race-create"))) == 1

    def test_describe_is_a_string(self, store: ObjectStore) -> None:
        assert isinstance(store.describe(), str) and store.describe()
