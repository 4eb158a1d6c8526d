"""A short-lived cache of serializable Range responses, invalidated by writes through the proxy.

A serializable read may be answered from any member's possibly stale state, so answering it
from the proxy's memory for a moment changes no promise, and it shields the cluster from
clients polling the same range (etcd's grpc-proxy caches them for the same reason). Two things
bound the staleness:

- a write through the proxy (Put, DeleteRange, a Txn's writes) drops every cached range it
  touches, a lease revocation or a compaction drops everything (their effects on keys are not
  visible in the request), so the cache never serves a range from before a write the proxy
  has acknowledged (the next serializable read asks a member, which may of course lag);
- entries expire after `ttl` seconds (`--range-cache-ttl`, 0 turns caching off), which bounds
  how long a write that bypassed the proxy (another proxy, a direct client, a lease expiry) can
  go unseen. etcd's cache keeps entries until evicted; the expiry is raftkv's addition.

Entries are keyed by the caller's auth token and the request's exact bytes, so one user's
answer is never served to another. The cache is a plain LRU of at most `max_entries` (etcd's
2048); invalidation scans it, which costs microseconds at that size.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = ["RangeCache", "written_ranges"]

DEFAULT_TTL_S = 1.0
DEFAULT_MAX_ENTRIES = 2048

# A key range as etcd spells it: end b"" is the single key, b"\0" everything from the key on.
KeyRange = tuple[bytes, bytes]


def _bounds(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """[start, end) with None for "no upper bound"."""
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, None
    return key, range_end


def overlaps(a: KeyRange, b: KeyRange) -> bool:
    a_start, a_end = _bounds(*a)
    b_start, b_end = _bounds(*b)
    return (b_end is None or a_start < b_end) and (a_end is None or b_start < a_end)


def written_ranges(txn: rpc_pb2.TxnRequest) -> list[KeyRange]:
    """The key ranges a transaction may write, in either branch, nested ones included."""
    ranges: list[KeyRange] = []
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put":
            ranges.append((op.request_put.key, b""))
        elif kind == "request_delete_range":
            ranges.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif kind == "request_txn":
            ranges.extend(written_ranges(op.request_txn))
    return ranges


@dataclass(slots=True)
class _Entry:
    range: KeyRange
    response: rpc_pb2.RangeResponse
    expires: float


class RangeCache:
    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        on_hit: Callable[[], None] = lambda: None,
        on_miss: Callable[[], None] = lambda: None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._on_hit = on_hit
        self._on_miss = on_miss
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str, request: rpc_pb2.RangeRequest) -> tuple[str, bytes]:
        return token, request.SerializeToString(deterministic=True)

    def get(self, token: str, request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse | None:
        key = self.key(token, request)
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self._clock():
            del self._entries[key]
            entry = None
        if entry is None:
            self._on_miss()
            return None
        self._entries.move_to_end(key)
        self._on_hit()
        return entry.response

    def put(
        self, token: str, request: rpc_pb2.RangeRequest, response: rpc_pb2.RangeResponse
    ) -> None:
        if self.ttl <= 0:
            return  # caching is off
        key = self.key(token, request)
        self._entries[key] = _Entry(
            (request.key, request.range_end), response, self._clock() + self.ttl
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, ranges: Iterable[KeyRange]) -> None:
        """Drop every cached read that overlaps one of `ranges`."""
        written = list(ranges)
        if not written:
            return
        stale = [
            key
            for key, entry in self._entries.items()
            if any(overlaps(entry.range, w) for w in written)
        ]
        for key in stale:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
