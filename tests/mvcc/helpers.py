"""One-op write transactions, to keep the tests short."""

from __future__ import annotations

from raftkv.mvcc import KVStore


def put(store: KVStore, key: bytes, value: bytes, lease: int = 0) -> int:
    with store.write() as txn:
        txn.put(key, value, lease)
    return store.current_revision


def delete(store: KVStore, key: bytes, range_end: bytes = b"") -> int:
    with store.write() as txn:
        txn.delete_range(key, range_end)
    return store.current_revision


def keys(store: KVStore, key: bytes, range_end: bytes = b"", **kw: int) -> list[bytes]:
    return [kv.key for kv in store.range(key, range_end, **kw).kvs]
