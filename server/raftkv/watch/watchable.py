"""The watchable store: etcd's synced / unsynced watcher groups over the MVCC store.

Why it is shaped this way:

- **Synced watchers are fed by the write path.** The store calls `_notify(events, revision)`
  once per write transaction; each synced watcher whose range the events touch gets all of that
  revision's events for it in one response (atomic per revision; encoded once for every watcher
  that gets the same events, and added to the watcher's queued response when its stream lags,
  see `stream`). This runs inside the apply loop, so it only queues responses and never waits.
- **Everyone else catches up from history.** A watcher that starts in the past, whose stream
  queue was full when a write arrived (a slow reader: etcd's "victim"), or that survived a
  snapshot restore, is unsynced: it remembers the next revision it owes (`next_rev`) and a
  background task reads history with `events_since` in bounded windows (revisions and events)
  and queues one response per watcher per window (cut earlier, between revisions, at a byte
  budget). Watchers lagging by similar amounts share one
  read. Once a watcher reaches the current revision it joins the synced group; the event loop is
  single-threaded, so no write can slip in between the last history read and that move.
- **Bounded memory, no head-of-line blocking.** Nothing is ever held for a watcher that cannot
  take it: a full stream queue turns the watcher unsynced and the history in the backend is its
  buffer. Writes and other watchers never wait for a slow client.
- **Compaction cancels.** A watcher whose `next_rev` falls below the compaction revision gets
  etcd's response (canceled, compact_revision set, header revision 0) and nothing more.

The store is seen through the small `KVSource` protocol (this package sits beside mvcc and does
not import it). Everything runs on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb.kv_pb2 import Event, KeyValue
from raftkv.watch.stream import (
    MAX_PENDING_BYTES,
    MAX_PENDING_RESPONSES,
    WatchStream,
    encode_events,
)
from raftkv.watch.watcher import FROM_KEY, State, Watcher, WatcherGroup

if TYPE_CHECKING:
    from raftkv.observability.tracing import Tracing

log = logging.getLogger(__name__)

# etcd's default --experimental-watch-progress-notify-interval.
DEFAULT_PROGRESS_INTERVAL = 600.0
# A catch-up window spans at most this many revisions (etcd's watchBatchMaxRevs) ...
WINDOW_REVISIONS = 1000
# ... and reads about this many events (whole revisions, so it may read a few more).
WINDOW_EVENTS = 1000
# A catch-up response stops adding revisions past this size (a client's default receive limit is
# often 4 MiB); etcd does not bound it, and a single revision is never split.
MAX_BATCH_BYTES = 2 * 1024 * 1024


class RangeResultLike(Protocol):
    kvs: list[KeyValue]


class KVSource(Protocol):
    """What the watchable store needs from the MVCC store (raftkv.mvcc.KVStore)."""

    @property
    def current_revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def add_listener(self, listener: Callable[[list[Event], int], None]) -> None: ...

    def events_since(
        self,
        start_rev: int,
        *,
        key: bytes = b"",
        range_end: bytes = FROM_KEY,
        limit: int = 0,
        end_rev: int = 0,
    ) -> list[Event]: ...

    def range(
        self, key: bytes, range_end: bytes = b"", *, revision: int = 0
    ) -> RangeResultLike: ...


def event_revision(event: Event) -> int:
    return event.kv.mod_revision


def _is_create(event: Event) -> bool:
    return event.type == Event.PUT and event.kv.create_revision == event.kv.mod_revision


class WatchableStore:
    """All watchers of one member; see the module docstring."""

    def __init__(
        self,
        store: KVSource,
        *,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        max_pending: int = MAX_PENDING_RESPONSES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        window_revisions: int = WINDOW_REVISIONS,
        window_events: int = WINDOW_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._tracing = tracing
        self._progress_interval = progress_interval
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._window_revisions = window_revisions
        self._window_events = window_events
        self._max_batch_bytes = max_batch_bytes
        self._synced = WatcherGroup()
        self._unsynced: set[Watcher] = set()
        self._progress: set[Watcher] = set()
        self._sync_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        store.add_listener(self._notify)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the catch-up and progress tasks (on the running event loop)."""
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="watch-sync"),
            asyncio.create_task(self._progress_loop(), name="watch-progress"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def open_stream(self) -> WatchStream:
        return WatchStream(
            self, max_pending=self._max_pending, max_pending_bytes=self._max_pending_bytes
        )

    def restore(self, store: KVSource) -> None:
        """The state was replaced by a snapshot: watch `store` from now on, and make every
        watcher catch up from its next revision (or be canceled if that was compacted)."""
        boundary = self._store.current_revision + 1
        self._store = store
        store.add_listener(self._notify)
        for watcher in list(self._synced):
            self._synced.remove(watcher)
            watcher.next_rev = max(watcher.next_rev, boundary)
            self._make_unsynced(watcher)

    @property
    def current_revision(self) -> int:
        return self._store.current_revision

    @property
    def watcher_counts(self) -> tuple[int, int]:
        """(synced, unsynced) watchers."""
        return len(self._synced), len(self._unsynced)

    # ---- what streams call -------------------------------------------------------------------

    def add(self, watcher: Watcher, start_revision: int) -> None:
        """Start serving a new watcher: synced if it starts now or in the future, else
        unsynced from `start_revision`."""
        current = self._store.current_revision
        if watcher.progress_notify:
            self._progress.add(watcher)
        if start_revision == 0 or start_revision > current:
            watcher.next_rev = max(start_revision, current + 1)
            watcher.state = State.SYNCED
            self._synced.add(watcher)
        else:
            watcher.next_rev = start_revision
            self._make_unsynced(watcher)

    def remove(self, watcher: Watcher) -> None:
        if watcher.state is State.SYNCED:
            self._synced.remove(watcher)
        elif watcher.state is State.UNSYNCED:
            self._unsynced.discard(watcher)
        self._progress.discard(watcher)
        watcher.state = State.CLOSED

    def stream_has_room(self) -> None:
        """A full stream queue has room again: its unsynced watchers can make progress."""
        if self._unsynced:
            self._sync_wakeup.set()

    # ---- synced watchers: the write path -----------------------------------------------------

    def _notify(self, events: list[Event], revision: int) -> None:
        if not len(self._synced):  # every write calls this; most members watch nothing
            return
        batches: dict[Watcher, list[Event]] = {}
        for event in events:
            for watcher in self._synced.matching(event.kv.key):
                if revision >= watcher.next_rev and watcher.accepts(event):
                    batches.setdefault(watcher, []).append(event)
        if not batches:
            return
        # Under a traced write's apply span: one span for the fan-out, whose context rides with
        # each response to the stream that sends it (watch.send).
        span = None
        if self._tracing is not None:
            span = self._tracing.child_span(
                "watch.notify", {"watch.revision": revision, "watch.watchers": len(batches)}
            )
        trace = span.get_span_context() if span is not None else None
        without_prev: dict[int, Event] = {}
        # Watchers of the same keys get the same events: encoded once for all of them.
        encoded: dict[tuple[bool, tuple[int, ...]], bytes] = {}
        for watcher, batch in batches.items():
            shape = (watcher.prev_kv, tuple(map(id, batch)))
            data = encoded.get(shape)
            if data is None:
                if not watcher.prev_kv:
                    batch = [_without_prev(event, without_prev) for event in batch]
                data = encoded[shape] = encode_events(batch)
            if watcher.stream.push_encoded(watcher, revision, data, len(batch), trace):
                watcher.progress_due = False
            else:
                # A slow reader: drop the batch, catch up from history once it has read.
                self._synced.remove(watcher)
                watcher.next_rev = revision
                self._make_unsynced(watcher)
        if span is not None:
            span.end()

    def _make_unsynced(self, watcher: Watcher) -> None:
        watcher.state = State.UNSYNCED
        self._unsynced.add(watcher)
        self._sync_wakeup.set()

    # ---- unsynced watchers: catching up from history -----------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await self._sync_wakeup.wait()
            self._sync_wakeup.clear()
            # Rounds sweep the lagging watchers window by window from the oldest, so a watcher
            # far behind does not keep one that is almost synced waiting for it.
            progressed = True
            while progressed:
                progressed = False
                floor = 0
                try:
                    while (last := self._sync_window(floor)) is not None:
                        progressed = True
                        floor = last + 1
                        await asyncio.sleep(0)
                except Exception:
                    # Keep serving the other watchers; the failed window is retried later.
                    log.exception("watch catch-up failed")
                    await asyncio.sleep(0.1)
                    self._sync_wakeup.set()

    def _sync_window(self, floor: int) -> int | None:
        """Serve one history window to the ready unsynced watchers whose next revision is the
        lowest at or above `floor`. Returns the window's last revision, None if none was ready."""
        store = self._store
        current, compacted = store.current_revision, store.compact_revision
        low: int | None = None
        for watcher in list(self._unsynced):
            if watcher.stream.full or watcher.next_rev < floor:
                continue
            if watcher.next_rev < compacted:
                self._cancel_compacted(watcher, compacted)
            elif watcher.next_rev > current:
                self._make_synced(watcher)
            elif low is None or watcher.next_rev < low:
                low = watcher.next_rev
        if low is None:
            return None
        high = min(low + self._window_revisions - 1, current)
        events = store.events_since(low, limit=self._window_events, end_rev=high)
        if len(events) >= self._window_events:
            high = event_revision(events[-1])
        with_prev: dict[int, Event] = {}
        for watcher in [w for w in self._unsynced if low <= w.next_rev <= high]:
            if watcher.stream.full:
                continue
            batch, resume = self._history_batch(watcher, events, high + 1, with_prev)
            if batch:
                response = rpc_pb2.WatchResponse(
                    header=rpc_pb2.ResponseHeader(revision=current),
                    watch_id=watcher.id,
                    events=batch,
                )
                watcher.stream.push(response, watcher.fragment)
                watcher.progress_due = False
            watcher.next_rev = resume
            if resume > current:
                self._make_synced(watcher)
        return high

    def _history_batch(
        self, watcher: Watcher, events: list[Event], resume: int, with_prev: dict[int, Event]
    ) -> tuple[list[Event], int]:
        """The watcher's events among `events`, and the revision it resumes from: `resume`,
        or earlier if the batch reached the byte budget (cut between revisions only)."""
        batch: list[Event] = []
        size = 0
        for event in events:
            revision = event_revision(event)
            if (
                revision < watcher.next_rev
                or not watcher.matches(event.kv.key)
                or not watcher.accepts(event)
            ):
                continue
            if size >= self._max_batch_bytes and revision != event_revision(batch[-1]):
                return batch, revision
            if watcher.prev_kv:
                event = self._with_prev(event, with_prev)
            batch.append(event)
            size += event.ByteSize()
        return batch, resume

    def _make_synced(self, watcher: Watcher) -> None:
        self._unsynced.discard(watcher)
        watcher.state = State.SYNCED
        self._synced.add(watcher)

    def _cancel_compacted(self, watcher: Watcher, compacted: int) -> None:
        self._unsynced.discard(watcher)
        self._progress.discard(watcher)
        watcher.state = State.COMPACTED
        # etcd leaves the header revision of this response at 0.
        watcher.stream.push_control(
            rpc_pb2.WatchResponse(
                header=rpc_pb2.ResponseHeader(revision=0),
                watch_id=watcher.id,
                canceled=True,
                compact_revision=compacted,
            )
        )

    def _with_prev(self, event: Event, cache: dict[int, Event]) -> Event:
        """`event` with the key's previous version (read at mod_revision - 1), as etcd sends it:
        none for a creation or when that revision was compacted."""
        found = cache.get(id(event))
        if found is not None:
            return found
        found = event
        before = event_revision(event) - 1
        if not _is_create(event) and before >= self._store.compact_revision:
            kvs = self._store.range(event.kv.key, revision=before).kvs
            if kvs:
                found = Event(type=event.type, kv=event.kv, prev_kv=kvs[0])
        cache[id(event)] = found
        return found

    # ---- progress notifications --------------------------------------------------------------

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            self._notify_progress(list(self._progress))

    def _notify_progress(self, watchers: Iterable[Watcher]) -> None:
        """etcd's periodic progress: an empty response with the current revision to each synced
        watcher that asked for it and got no events since the previous tick."""
        revision = self._store.current_revision
        for watcher in watchers:
            if watcher.progress_due and watcher.state is State.SYNCED:
                watcher.stream.push(
                    rpc_pb2.WatchResponse(
                        header=rpc_pb2.ResponseHeader(revision=revision), watch_id=watcher.id
                    ),
                    False,
                )
            watcher.progress_due = True


def _without_prev(event: Event, cache: dict[int, Event]) -> Event:
    """`event` without prev_kv (the write path always carries it)."""
    if not event.HasField("prev_kv"):
        return event
    found = cache.get(id(event))
    if found is None:
        found = cache[id(event)] = Event(type=event.type, kv=event.kv)
    return found
