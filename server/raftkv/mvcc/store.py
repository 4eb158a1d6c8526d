"""The multi-version key-value store: etcd's revision model over the sqlite backend.

Layout in the backend (the same split as etcd's bolt buckets):

- bucket `key`: encoded revision (see revision.py) → serialized `mvccpb.KeyValue` as written at
  that revision. Deletions are rows whose key carries the tombstone mark and whose value holds
  only the key. Scanning this bucket in order replays history, which is how the in-memory key
  index is rebuilt on open and how watchers catch up (`events_since`).
- bucket `meta`: the consistent index (the last applied Raft index, written by a backend
  pre-commit hook so it always commits together with the data it produced) and the scheduled /
  finished compaction revisions.

Revisions follow etcd exactly: a fresh store is at revision 1; a write transaction that changes
anything bumps the main revision once and numbers its changes with sub revisions 0, 1, 2, ...;
`create_revision`, `mod_revision` and `version` are kept per key and reset after a delete.

Compaction is split in two, like etcd's: `compact(rev)` updates the index at once (reads and
watches see the compacted store immediately) and records the rows to delete; `compact_step()`
deletes them from the backend in bounded chunks, so a compaction of a long history never stalls
the event loop: the server calls it between requests while `compaction_pending`. The scheduled
and finished revisions in `meta` let a restart resume an unfinished compaction.

Not thread-safe: it is driven from the server's event loop only, one write transaction at a time.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from raftkv.mvcc.errors import CompactedError, EmptyKeyError, FutureRevisionError
from raftkv.mvcc.key_index import KeyIndexTree
from raftkv.mvcc.revision import Revision, is_tombstone, revision_floor
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.storage.backend import Backend

KEY_BUCKET = "key"
META_BUCKET = "meta"
_CONSISTENT_INDEX = b"consistent_index"
_SCHEDULED_COMPACT = b"scheduledCompactRev"
_FINISHED_COMPACT = b"finishedCompactRev"
_INT = struct.Struct(">q")

# Rows deleted per compaction step; etcd's default compaction batch limit is also 1000.
COMPACTION_BATCH = 1000

Listener = Callable[[list[Event], int], None]


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int  # keys matching, before `limit`
    revision: int  # the store's current revision (etcd reports this, not the revision read)


def key_in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    """etcd's range rule: empty `range_end` → `key` only; b"\\0" → all >= key; else [key, end)."""
    if not range_end:
        return k == key
    if range_end == b"\0":
        return k >= key
    return key <= k < range_end


class KVStore:
    """etcd's MVCC key-value store over a Backend; see the module docstring."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        backend.create_bucket(KEY_BUCKET)
        backend.create_bucket(META_BUCKET)
        self._index = KeyIndexTree()
        self._current = 1
        self._compact = -1  # etcd reports -1 until the first compaction
        self._pending_deletes: deque[bytes] = deque()
        self._listeners: list[Listener] = []
        self._in_txn = False
        raw = backend.get(META_BUCKET, _CONSISTENT_INDEX)
        self._consistent_index = 0 if raw is None else _INT.unpack(raw)[0]
        self._consistent_index_dirty = False
        self._restore()
        backend.add_pre_commit_hook(self._save_consistent_index)

    def _restore(self) -> None:
        for raw_rev, raw_kv in self._backend.iter_range(KEY_BUCKET, b""):
            rev = Revision.from_bytes(raw_rev)
            kv = KeyValue.FromString(raw_kv)
            self._index.restore_row(
                kv.key, rev, is_tombstone(raw_rev), kv.create_revision, kv.version
            )
            self._current = max(self._current, rev.main)
        finished = self._meta_int(_FINISHED_COMPACT)
        scheduled = self._meta_int(_SCHEDULED_COMPACT)
        if finished is not None:
            self._compact = finished
        if scheduled is not None and scheduled != finished:
            self._compact = scheduled
            self._pending_deletes.extend(self._index.compact(scheduled))
            if not self._pending_deletes:
                self._backend.put(META_BUCKET, _FINISHED_COMPACT, _INT.pack(scheduled))
        self._current = max(self._current, self._compact)

    def _meta_int(self, name: bytes) -> int | None:
        raw = self._backend.get(META_BUCKET, name)
        return None if raw is None else _INT.unpack(raw)[0]

    # -- state ---------------------------------------------------------------------------------

    @property
    def current_revision(self) -> int:
        return self._current

    @property
    def compact_revision(self) -> int:
        """The last compaction revision; -1 before the first compaction (as etcd reports)."""
        return self._compact

    @property
    def consistent_index(self) -> int:
        """The Raft index of the last applied entry, as committed (or about to be)."""
        return self._consistent_index

    def set_consistent_index(self, index: int) -> None:
        """Record the entry being applied; written in the next backend commit with its data."""
        self._consistent_index = index
        self._consistent_index_dirty = True

    def _save_consistent_index(self) -> None:
        if self._consistent_index_dirty:
            self._backend.put(META_BUCKET, _CONSISTENT_INDEX, _INT.pack(self._consistent_index))
            self._consistent_index_dirty = False

    def key_count(self) -> int:
        """Keys that exist at the current revision."""
        return self._index.live_count

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(events, revision)` after every write transaction that changed
        something. PUT events carry `prev_kv` when the key existed; DELETE events carry a kv with
        the key and the deletion's mod_revision, and `prev_kv` (consumers that must not expose
        prev_kv clear it)."""
        self._listeners.append(listener)

    # -- reads ---------------------------------------------------------------------------------

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        """Keys in etcd's range (see `key_in_range`) as of `revision` (0: current)."""
        return self._range(
            key, range_end, self._current, revision, limit, keys_only, count_only, self._read_row
        )

    def _range(
        self,
        key: bytes,
        range_end: bytes,
        current: int,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        read: Callable[[Revision], KeyValue],
    ) -> RangeResult:
        if revision > current:
            raise FutureRevisionError()
        if revision <= 0:
            revision = current
        if revision < self._compact:
            raise CompactedError()
        hits = self._index.range(key, range_end, revision)
        if count_only:
            return RangeResult([], len(hits), current)
        selected = hits[:limit] if 0 < limit < len(hits) else hits
        kvs = [read(rev) for _, rev in selected]
        if keys_only:
            for kv in kvs:
                kv.ClearField("value")
        return RangeResult(kvs, len(hits), current)

    def _read_row(self, rev: Revision) -> KeyValue:
        raw = self._backend.get(KEY_BUCKET, rev.to_bytes())
        if raw is None:
            raise RuntimeError(f"mvcc: the index refers to a missing backend row {rev}")
        return KeyValue.FromString(raw)

    def events_since(
        self,
        start_rev: int,
        *,
        key: bytes = b"",
        range_end: bytes = b"\0",
        limit: int = 0,
        end_rev: int = 0,
    ) -> list[Event]:
        """Past events with main revision in [start_rev, end_rev] (end 0: current) for keys in
        etcd's range (default: all keys), oldest first, read from the backend; for watchers
        catching up.

        `limit` (0: none) is soft: once reached, the rest of that revision is still returned, so
        a caller can resume from the last event's revision + 1 without losing events. Events do
        not carry prev_kv. Raises CompactedError if `start_rev` is below the compaction revision.
        """
        if start_rev < self._compact:
            raise CompactedError()
        end = end_rev or self._current
        events: list[Event] = []
        last_main = -1
        for raw_rev, raw_kv in self._backend.iter_range(
            KEY_BUCKET, revision_floor(max(start_rev, 0)), revision_floor(end + 1)
        ):
            rev = Revision.from_bytes(raw_rev)
            if limit and len(events) >= limit and rev.main != last_main:
                break
            kv = KeyValue.FromString(raw_kv)
            if not key_in_range(kv.key, key, range_end):
                continue
            if is_tombstone(raw_rev):
                kv.mod_revision = rev.main
                events.append(Event(type=Event.DELETE, kv=kv))
            else:
                events.append(Event(type=Event.PUT, kv=kv))
            last_main = rev.main
        return events

    # -- writes --------------------------------------------------------------------------------

    def write(self) -> WriteTxn:
        """Begin the write transaction; one at a time. Use as a context manager or call end()."""
        if self._in_txn:
            raise RuntimeError("mvcc: a write transaction is already open")
        self._in_txn = True
        return WriteTxn(self)

    def _commit_txn(self, main: int, rows: list[tuple[bytes, bytes]], events: list[Event]) -> None:
        self._in_txn = False
        if not events:
            return
        self._backend.put_many(KEY_BUCKET, rows)
        self._current = main
        for listener in self._listeners:
            listener(events, main)

    # -- compaction ----------------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Compact history at `rev` (etcd's errors); rows are deleted later by compact_step()."""
        if rev <= self._compact:
            raise CompactedError()
        if rev > self._current:
            raise FutureRevisionError()
        self._pending_deletes.extend(self._index.compact(rev))
        self._compact = rev
        self._backend.put(META_BUCKET, _SCHEDULED_COMPACT, _INT.pack(rev))
        if not self._pending_deletes:
            self._backend.put(META_BUCKET, _FINISHED_COMPACT, _INT.pack(rev))

    @property
    def compaction_pending(self) -> bool:
        """True while compacted rows still wait for physical deletion."""
        return bool(self._pending_deletes)

    def compact_step(self, limit: int = COMPACTION_BATCH) -> bool:
        """Delete up to `limit` compacted rows (in the current backend batch); True if more
        remain. The last step records the compaction as finished."""
        if not self._pending_deletes:
            return False
        n = min(limit, len(self._pending_deletes))
        pending = self._pending_deletes
        self._backend.delete_many(KEY_BUCKET, [pending.popleft() for _ in range(n)])
        if pending:
            return True
        self._backend.put(META_BUCKET, _FINISHED_COMPACT, _INT.pack(self._compact))
        return False

    def finish_compaction(self) -> None:
        """Run compaction steps until no compacted row is left in the backend."""
        while self.compact_step():
            pass

    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """(hash, compact_revision, current_revision): crc32 of the key bucket rows up to `rev`
        (0: current). Equal on every member holding the same history and compaction, because
        pending physical compaction is finished first. etcd's errors for compacted/future rev."""
        if 0 < rev <= self._compact:
            raise CompactedError()
        if rev > self._current:
            raise FutureRevisionError()
        if rev <= 0:
            rev = self._current
        self.finish_compaction()
        crc = zlib.crc32(KEY_BUCKET.encode())
        for k, v in self._backend.iter_range(KEY_BUCKET, b"", revision_floor(rev + 1)):
            crc = zlib.crc32(v, zlib.crc32(k, crc))
        return crc, self._compact, self._current


class WriteTxn:
    """One write transaction: every change gets the same main revision (current + 1).

    Reads through the transaction see its own earlier writes. `end()` (or leaving the `with`
    block, even by an exception) writes the rows, bumps the revision if anything changed, and
    notifies the store's listeners; the backend commit itself is the caller's (batched) business.
    """

    def __init__(self, store: KVStore) -> None:
        self._store = store
        self._main = store.current_revision + 1
        self._rows: list[tuple[bytes, bytes]] = []
        self._written: dict[Revision, KeyValue] = {}
        self.events: list[Event] = []
        self._ended = False

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._ended:
            self.end()

    @property
    def revision(self) -> int:
        """The revision reads in this transaction observe (bumped once it has changed data)."""
        return self._main if self.events else self._main - 1

    def _read(self, rev: Revision) -> KeyValue:
        written = self._written.get(rev)
        if written is not None:
            out = KeyValue()
            out.CopyFrom(written)
            return out
        return self._store._read_row(rev)

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        """As KVStore.range, at this transaction's revision and including its writes."""
        return self._store._range(
            key, range_end, self.revision, revision, limit, keys_only, count_only, self._read
        )

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue | None:
        """Write `key`; returns the previous KeyValue (None if the key did not exist)."""
        if not key:
            raise EmptyKeyError()
        index = self._store._index
        rev = Revision(self._main, len(self.events))
        found = index.get(key, self._main)
        prev = None if found is None else self._read(found[0])
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=self._main if found is None else found[1].main,
            mod_revision=self._main,
            version=1 if found is None else found[2] + 1,
            lease=lease,
        )
        self._rows.append((rev.to_bytes(), kv.SerializeToString()))
        self._written[rev] = kv
        index.put(key, rev)
        self.events.append(Event(type=Event.PUT, kv=kv, prev_kv=prev))
        return prev

    def delete_range(self, key: bytes, range_end: bytes = b"") -> list[KeyValue]:
        """Delete the keys in etcd's range; returns their previous KeyValues in key order."""
        index = self._store._index
        deleted = []
        for k, mod in index.range(key, range_end, self._main):
            prev = self._read(mod)
            rev = Revision(self._main, len(self.events))
            self._rows.append((rev.to_bytes(tombstone=True), KeyValue(key=k).SerializeToString()))
            index.tombstone(k, rev)
            self.events.append(
                Event(type=Event.DELETE, kv=KeyValue(key=k, mod_revision=self._main), prev_kv=prev)
            )
            deleted.append(prev)
        return deleted

    def end(self) -> list[Event]:
        """Finish the transaction; returns its events (empty if it changed nothing)."""
        if self._ended:
            raise RuntimeError("mvcc: write transaction already ended")
        self._ended = True
        self._store._commit_txn(self._main, self._rows, self.events)
        return self.events
