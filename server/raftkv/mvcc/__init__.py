"""etcd's multi-version key-value store: revisions, the key index, ranges, txns, compaction."""

from raftkv.mvcc.errors import CompactedError, EmptyKeyError, FutureRevisionError, MVCCError
from raftkv.mvcc.revision import Revision
from raftkv.mvcc.store import KVStore, RangeResult, WriteTxn, key_in_range

__all__ = [
    "CompactedError",
    "EmptyKeyError",
    "FutureRevisionError",
    "KVStore",
    "MVCCError",
    "RangeResult",
    "Revision",
    "WriteTxn",
    "key_in_range",
]
