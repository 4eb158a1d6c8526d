"""Compaction: etcd's errors, reads and watches afterwards, chunked physical deletion, resuming
after a restart, bounded index memory, and hash_kv agreement between members."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import raftkv.mvcc
from raftkv.mvcc import CompactedError, FutureRevisionError, KVStore
from raftkv.mvcc.store import KEY_BUCKET
from raftkv.pb.mvccpb.kv_pb2 import Event
from raftkv.storage.backend import Backend

from .helpers import delete, put


def rows(backend: Backend) -> int:
    return backend.count(KEY_BUCKET)


def test_compaction_errors_follow_etcd(store: KVStore) -> None:
    assert store.compact_revision == -1
    store.compact(0)  # etcd accepts compacting a fresh store at 0 once
    with pytest.raises(CompactedError):
        store.compact(0)
    put(store, b"a", b"1")
    with pytest.raises(FutureRevisionError):
        store.compact(3)
    store.compact(2)
    assert store.compact_revision == 2
    with pytest.raises(CompactedError, match="required revision has been compacted"):
        store.compact(2)
    with pytest.raises(CompactedError):
        store.compact(1)


def test_compaction_keeps_what_each_key_shows_at_the_compaction_revision(
    tmp_path: Path,
) -> None:
    backend = Backend(tmp_path / "db")
    store = KVStore(backend)
    put(store, b"a", b"1")  # 2
    put(store, b"a", b"2")  # 3
    put(store, b"b", b"1")  # 4
    delete(store, b"b")  # 5
    put(store, b"c", b"1")  # 6
    delete(store, b"c")  # 7
    put(store, b"a", b"3")  # 8
    assert rows(backend) == 7
    store.compact(5)
    store.finish_compaction()
    # Left: a@3 (a's value at 5), a@8, b's tombstone at exactly 5, c@6 and its tombstone at 7.
    assert rows(backend) == 5
    assert [kv.value for kv in store.range(b"a", revision=5).kvs] == [b"2"]
    assert store.range(b"b", revision=5).kvs == []
    # A watcher starting at the compaction revision still sees the deletion made there.
    assert [(e.type, e.kv.key) for e in store.events_since(5, end_rev=5)] == [(Event.DELETE, b"b")]
    store.compact(8)
    store.finish_compaction()
    assert rows(backend) == 1  # only a@8
    assert [kv.value for kv in store.range(b"a", b"\0").kvs] == [b"3"]
    backend.close()


def test_physical_deletion_runs_in_bounded_steps(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "db")
    store = KVStore(backend)
    for i in range(50):
        put(store, b"k", str(i).encode())
    store.compact(store.current_revision)
    # The index is compacted at once; rows go in steps.
    assert store.compaction_pending
    assert rows(backend) == 50
    assert store.compact_step(limit=20)
    assert rows(backend) == 30
    assert store.compact_step(limit=20)
    assert not store.compact_step(limit=20)
    assert not store.compaction_pending
    assert rows(backend) == 1
    assert not store.compact_step()
    backend.close()


def test_a_restart_resumes_an_unfinished_compaction(tmp_path: Path) -> None:
    def history(store: KVStore) -> None:
        for i in range(30):
            put(store, bytes([97 + i % 3]), str(i).encode())
        delete(store, b"b")
        put(store, b"d", b"x")
        store.compact(25)

    reference = KVStore(Backend(tmp_path / "reference"))
    history(reference)
    reference.finish_compaction()

    backend = Backend(tmp_path / "db")
    store = KVStore(backend)
    history(store)
    store.compact_step(limit=5)
    backend.commit()
    expected = [store.range(b"\0", b"\0", revision=r).kvs for r in range(25, 34)]
    backend.close()

    backend = Backend(tmp_path / "db")
    reopened = KVStore(backend)
    assert reopened.compact_revision == 25
    assert reopened.current_revision == 33
    assert reopened.compaction_pending
    reopened.finish_compaction()
    backend.commit()
    assert [reopened.range(b"\0", b"\0", revision=r).kvs for r in range(25, 34)] == expected
    assert reopened.hash_kv() == reference.hash_kv()
    backend.close()

    backend = Backend(tmp_path / "db")
    again = KVStore(backend)
    assert not again.compaction_pending
    assert again.compact_revision == 25
    assert again.hash_kv() == reference.hash_kv()
    backend.close()


def _mvcc_bytes() -> int:
    folder = Path(raftkv.mvcc.__file__).parent
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, str(folder / "*"))]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_index_memory_does_not_grow_with_compacted_history(store: KVStore) -> None:
    def write_history(n: int) -> None:
        for i in range(n):
            put(store, b"hot", str(i).encode())
            if i % 10 == 0:
                put(store, b"temp%d" % i, b"x")
                delete(store, b"temp%d" % i)

    tracemalloc.start()
    try:
        write_history(2000)
        uncompacted = _mvcc_bytes()
        store.compact(store.current_revision)
        store.finish_compaction()
        after_first = _mvcc_bytes()
        write_history(2000)
        store.compact(store.current_revision)
        store.finish_compaction()
        after_second = _mvcc_bytes()
    finally:
        tracemalloc.stop()
    assert uncompacted > after_first + 100_000
    assert after_second <= after_first + 4096  # allocator noise, not 2000 revisions
    assert store.key_count() == 1


def _feed(store: KVStore) -> None:
    for i in range(40):
        put(store, b"k%d" % (i % 7), b"v%d" % i, lease=i % 3)
        if i % 5 == 4:
            delete(store, b"k%d" % (i % 4))


def test_hash_kv_is_equal_for_equal_histories(tmp_path: Path) -> None:
    one = KVStore(Backend(tmp_path / "one"))
    two = KVStore(Backend(tmp_path / "two"))
    _feed(one)
    _feed(two)
    one.compact(30)
    two.compact(30)
    one.finish_compaction()  # only one member has finished its physical compaction
    assert one.hash_kv(40) == two.hash_kv(40)
    assert one.hash_kv() == two.hash_kv()
    assert one.hash_kv(45)[1:] == (30, 49)
    assert one.hash_kv(40)[0] != one.hash_kv(41)[0]
    put(two, b"k1", b"different")
    assert one.hash_kv(49)[0] == two.hash_kv(49)[0]
    assert one.hash_kv()[0] != two.hash_kv()[0]
    with pytest.raises(CompactedError):
        one.hash_kv(30)
    with pytest.raises(FutureRevisionError):
        one.hash_kv(50)
