"""The incremental format and its replay: a store rebuilt from a snapshot plus replayed events
has the source's rows byte for byte (HashKV), and events that do not fit are refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from raftkv.backup.errors import CorruptBackupError
from raftkv.backup.events import MAGIC, encode_record, encode_varint, read_events, replay
from raftkv.mvcc import KVStore
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.storage.backend import Backend


def encode(events: list[Event]) -> bytes:
    return MAGIC + b"".join(encode_record(e) for e in events)


def write_history(store: KVStore, start: int) -> None:
    """Puts, overwrites, a multi-key transaction with a delete, leases, a re-created key."""
    for i in range(10):
        with store.write() as txn:
            txn.put(f"k{i}".encode(), f"v{start}-{i}".encode(), lease=7 if i % 3 == 0 else 0)
    with store.write() as txn:
        txn.put(b"k1", b"again")
        txn.put(b"k2", b"again")
        txn.delete_range(b"k3")
    with store.write() as txn:
        txn.delete_range(b"k5", b"k8")
    with store.write() as txn:
        txn.put(b"k6", b"back")


@pytest.fixture
def stores(tmp_path: Path) -> tuple[KVStore, KVStore]:
    """A source store and a copy of it at the same revision (what a full backup restores)."""
    source, copy = KVStore(Backend(tmp_path / "a.db")), KVStore(Backend(tmp_path / "b.db"))
    for store in (source, copy):
        write_history(store, 0)
    assert source.hash_kv()[0] == copy.hash_kv()[0]
    return source, copy


def test_replayed_events_rebuild_the_source_rows_exactly(stores: tuple[KVStore, KVStore]) -> None:
    source, copy = stores
    base = source.current_revision
    write_history(source, 1)
    data = encode(source.events_since(base + 1))
    reached = replay(copy, read_events(io.BytesIO(data), "inc"), until=10**9, name="inc")
    assert reached == source.current_revision
    assert copy.hash_kv()[0] == source.hash_kv()[0]
    assert copy.range(b"k", b"l").kvs == source.range(b"k", b"l").kvs


def test_replay_stops_at_the_target_revision(stores: tuple[KVStore, KVStore]) -> None:
    source, copy = stores
    base = source.current_revision
    write_history(source, 1)
    target = base + 5
    data = encode(source.events_since(base + 1))
    assert replay(copy, read_events(io.BytesIO(data), "inc"), until=target, name="inc") == target
    assert copy.hash_kv()[0] == source.hash_kv(target)[0]


def test_events_that_do_not_continue_the_store_are_refused(
    stores: tuple[KVStore, KVStore],
) -> None:
    source, copy = stores
    base = source.current_revision
    write_history(source, 1)
    later = encode(source.events_since(base + 3))
    with pytest.raises(CorruptBackupError, match="do not fit together"):
        replay(copy, read_events(io.BytesIO(later), "inc"), until=10**9, name="inc")


def test_a_delete_of_a_key_the_restore_lacks_is_refused(tmp_path: Path) -> None:
    store = KVStore(Backend(tmp_path / "c.db"))
    ghost = Event(type=Event.DELETE, kv=KeyValue(key=b"ghost", mod_revision=2))
    with pytest.raises(CorruptBackupError, match="finds no such key"):
        replay(store, [ghost], until=10, name="inc")


def test_a_put_whose_history_differs_is_refused(tmp_path: Path) -> None:
    store = KVStore(Backend(tmp_path / "d.db"))
    wrong = Event(
        type=Event.PUT,
        kv=KeyValue(key=b"k", value=b"v", create_revision=1, mod_revision=2, version=4),
    )
    with pytest.raises(CorruptBackupError, match="source had 1 and 4"):
        replay(store, [wrong], until=10, name="inc")


def test_the_format_round_trips_and_detects_damage() -> None:
    events = [
        Event(type=Event.PUT, kv=KeyValue(key=b"a" * n, value=b"x" * 300, mod_revision=n))
        for n in range(1, 6)
    ]
    data = encode(events)
    assert list(read_events(io.BytesIO(data), "inc")) == events
    assert encode_varint(300) == b"\xac\x02"
    with pytest.raises(CorruptBackupError, match="bad header"):
        list(read_events(io.BytesIO(b"PK" + data[2:]), "inc"))
    with pytest.raises(CorruptBackupError, match="truncated"):
        list(read_events(io.BytesIO(data[:-10]), "inc"))
    with pytest.raises(CorruptBackupError, match="truncated inside a record length"):
        list(read_events(io.BytesIO(MAGIC + b"\x80"), "inc"))
    with pytest.raises(CorruptBackupError):
        list(read_events(io.BytesIO(MAGIC + b"\x05\xff\xff\xff\xff\xff"), "inc"))
