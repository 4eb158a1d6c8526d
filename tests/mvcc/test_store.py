"""KVStore: etcd's revision numbering, range forms, old revisions, txns, events and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from raftkv.mvcc import CompactedError, EmptyKeyError, FutureRevisionError, KVStore
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.storage.backend import Backend

from .helpers import delete, keys, put


def test_fresh_store_is_at_revision_1_and_each_write_bumps_it_once(store: KVStore) -> None:
    assert store.current_revision == 1
    assert put(store, b"a", b"1") == 2
    with store.write() as txn:
        txn.put(b"x", b"1")
        txn.put(b"y", b"2")
        txn.put(b"z", b"3")
    assert store.current_revision == 3
    kvs = store.range(b"x", b"\0").kvs
    assert [(kv.key, kv.mod_revision, kv.create_revision) for kv in kvs] == [
        (b"x", 3, 3),
        (b"y", 3, 3),
        (b"z", 3, 3),
    ]


def test_a_txn_that_changes_nothing_keeps_the_revision(store: KVStore) -> None:
    put(store, b"a", b"1")
    with store.write() as txn:
        assert txn.delete_range(b"missing") == []
        assert txn.range(b"a").revision == 2
    assert store.current_revision == 2


def test_version_counts_puts_and_resets_after_delete(store: KVStore) -> None:
    put(store, b"k", b"1")
    put(store, b"k", b"2")
    kv = store.range(b"k").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"2")
    assert delete(store, b"k") == 4
    assert store.range(b"k").kvs == []
    put(store, b"k", b"3")
    kv = store.range(b"k").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_lease_is_recorded_on_the_key(store: KVStore) -> None:
    put(store, b"k", b"v", lease=42)
    assert store.range(b"k").kvs[0].lease == 42


def test_range_forms_limit_and_count(store: KVStore) -> None:
    for k in (b"a", b"b", b"c", b"d", b"\xff"):
        put(store, k, k)
    assert keys(store, b"b") == [b"b"]
    assert keys(store, b"b", b"d") == [b"b", b"c"]
    assert keys(store, b"c", b"\0") == [b"c", b"d", b"\xff"]
    assert keys(store, b"\0", b"\0") == [b"a", b"b", b"c", b"d", b"\xff"]
    assert keys(store, b"d", b"b") == []
    result = store.range(b"a", b"\0", limit=2)
    assert [kv.key for kv in result.kvs] == [b"a", b"b"]
    assert result.count == 5
    assert result.revision == store.current_revision
    counted = store.range(b"a", b"\0", count_only=True)
    assert (counted.kvs, counted.count) == ([], 5)
    bare = store.range(b"a", b"c", keys_only=True).kvs
    assert [(kv.key, kv.value, kv.version) for kv in bare] == [(b"a", b"", 1), (b"b", b"", 1)]


def test_reads_at_old_revisions(store: KVStore) -> None:
    put(store, b"k", b"1")  # 2
    put(store, b"k", b"2")  # 3
    put(store, b"j", b"x")  # 4
    delete(store, b"k")  # 5
    assert [kv.value for kv in store.range(b"k", revision=2).kvs] == [b"1"]
    assert [kv.value for kv in store.range(b"k", revision=4).kvs] == [b"2"]
    assert store.range(b"k", revision=5).kvs == []
    assert keys(store, b"a", b"z", revision=3) == [b"k"]
    assert keys(store, b"a", b"z", revision=4) == [b"j", b"k"]
    # The reported revision is the store's current one, as etcd reports it.
    assert store.range(b"k", revision=2).revision == 5
    with pytest.raises(FutureRevisionError, match="required revision is a future revision"):
        store.range(b"k", revision=6)


def test_compacted_revisions_cannot_be_read(store: KVStore) -> None:
    for i in range(5):
        put(store, b"k", str(i).encode())
    store.compact(4)
    with pytest.raises(CompactedError, match="required revision has been compacted"):
        store.range(b"k", revision=3)
    # etcd allows reading at exactly the compaction revision.
    assert [kv.value for kv in store.range(b"k", revision=4).kvs] == [b"2"]


def test_txn_reads_its_own_writes_and_returns_previous_values(store: KVStore) -> None:
    put(store, b"a", b"old")
    with store.write() as txn:
        prev = txn.put(b"a", b"new", lease=7)
        assert prev is not None and (prev.value, prev.mod_revision) == (b"old", 2)
        assert txn.put(b"b", b"fresh") is None
        seen = txn.range(b"a", b"c")
        assert [kv.value for kv in seen.kvs] == [b"new", b"fresh"]
        assert seen.revision == 3
        # Outside the txn, nothing is visible until it ends.
        assert [kv.value for kv in store.range(b"a").kvs] == [b"old"]
        deleted = txn.delete_range(b"a", b"c")
        assert [(kv.key, kv.value) for kv in deleted] == [(b"a", b"new"), (b"b", b"fresh")]
        assert txn.range(b"a", b"c").kvs == []
    assert store.current_revision == 3
    assert store.range(b"a", b"c").kvs == []


def test_empty_key_is_rejected(store: KVStore) -> None:
    with store.write() as txn, pytest.raises(EmptyKeyError, match="key is not provided"):
        txn.put(b"", b"v")
    assert store.current_revision == 1


def test_only_one_write_txn_at_a_time(store: KVStore) -> None:
    txn = store.write()
    with pytest.raises(RuntimeError):
        store.write()
    txn.end()
    with pytest.raises(RuntimeError):
        txn.end()
    store.write().end()


def test_events_and_listener(store: KVStore) -> None:
    seen: list[tuple[list[Event], int]] = []
    store.add_listener(lambda events, rev: seen.append((events, rev)))
    put(store, b"a", b"1")
    with store.write() as txn:
        txn.put(b"a", b"2", lease=5)
        txn.put(b"b", b"3")
        txn.delete_range(b"a")
    events = txn.events
    with store.write():
        pass  # no change: no notification
    assert [rev for _, rev in seen] == [2, 3]
    assert seen[1][0] == events
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (Event.PUT, b"a", 3),
        (Event.PUT, b"b", 3),
        (Event.DELETE, b"a", 3),
    ]
    assert events[0].kv == KeyValue(
        key=b"a", value=b"2", create_revision=2, mod_revision=3, version=2, lease=5
    )
    assert events[0].prev_kv.value == b"1"
    assert not events[1].HasField("prev_kv")
    # A delete event's kv holds only the key and the deletion revision, as etcd's does.
    assert events[2].kv == KeyValue(key=b"a", mod_revision=3)
    assert events[2].prev_kv.value == b"2"


def test_events_since_replays_history_from_the_backend(store: KVStore) -> None:
    put(store, b"a", b"1")  # 2
    with store.write() as txn:  # 3
        txn.put(b"b", b"1")
        txn.put(b"c", b"1")
    delete(store, b"a")  # 4
    put(store, b"z", b"1")  # 5
    every = store.events_since(2)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in every] == [
        (Event.PUT, b"a", 2),
        (Event.PUT, b"b", 3),
        (Event.PUT, b"c", 3),
        (Event.DELETE, b"a", 4),
        (Event.PUT, b"z", 5),
    ]
    assert [e.kv.key for e in store.events_since(3, key=b"a", range_end=b"c")] == [b"b", b"a"]
    assert [e.kv.mod_revision for e in store.events_since(0, key=b"a", range_end=b"")] == [2, 4]
    assert [e.kv.mod_revision for e in store.events_since(2, end_rev=3)] == [2, 3, 3]
    # A limit never splits a revision, so resuming at last + 1 loses nothing.
    assert [e.kv.key for e in store.events_since(2, limit=2)] == [b"a", b"b", b"c"]
    store.compact(3)
    with pytest.raises(CompactedError):
        store.events_since(2)
    assert [e.kv.mod_revision for e in store.events_since(3)] == [3, 3, 4, 5]


def test_key_count_follows_live_keys(store: KVStore) -> None:
    put(store, b"a", b"1")
    put(store, b"b", b"1")
    put(store, b"a", b"2")
    assert store.key_count() == 2
    delete(store, b"a", b"\0")
    assert store.key_count() == 0


def test_restart_rebuilds_the_same_state(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "db")
    store = KVStore(backend)
    put(store, b"a", b"1")
    put(store, b"a", b"2")
    put(store, b"b", b"1")
    delete(store, b"b")
    put(store, b"b", b"2")
    put(store, b"c", b"1")
    store.set_consistent_index(17)
    backend.commit()
    before = [store.range(b"\0", b"\0", revision=r).kvs for r in range(1, 8)]
    backend.close()

    backend = Backend(tmp_path / "db")
    reopened = KVStore(backend)
    assert reopened.current_revision == 7
    assert reopened.consistent_index == 17
    assert reopened.key_count() == 3
    assert [reopened.range(b"\0", b"\0", revision=r).kvs for r in range(1, 8)] == before
    # Versions and creation revisions continue where they were.
    put(reopened, b"b", b"3")
    kv = reopened.range(b"b").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (6, 8, 2)
    backend.close()


def test_uncommitted_writes_and_consistent_index_are_lost_together(tmp_path: Path) -> None:
    backend = Backend(tmp_path / "db")
    store = KVStore(backend)
    store.set_consistent_index(1)
    put(store, b"a", b"1")
    backend.commit()
    store.set_consistent_index(2)
    put(store, b"a", b"2")
    backend.close()  # crash before the batch commit

    backend = Backend(tmp_path / "db")
    reopened = KVStore(backend)
    assert reopened.consistent_index == 1
    assert reopened.current_revision == 2
    assert [kv.value for kv in reopened.range(b"a").kvs] == [b"1"]
    backend.close()
