"""One client's Watch stream: its watchers and the bounded queue of responses waiting to be sent.

etcd's rules for a stream, reproduced here:

- watch IDs are per stream; 0 asks the server to pick the lowest free ID counting up from 0;
  a taken ID or an empty key range refuses the create with a response that is both `created`
  and `canceled`, has watch_id -1 and says why in `cancel_reason`;
- every response waits in one FIFO queue, so a watcher's `created` always precedes its events
  and `canceled` always follows them;
- a stream holds at most `max_watchers` watchers watching at most `max_key_bytes` of keys and
  range ends (etcd has no limit; these are far above any real client's needs and stop one
  stream from holding unbounded memory); a create beyond them is refused like the others, with
  TOO_MANY_WATCHERS or TOO_MANY_KEY_BYTES, and the client may open another stream;
- the queue is bounded (etcd's 128 responses, plus a byte budget). Event responses are refused
  when it is full and the watchable store turns the watcher into an unsynced one that catches
  up later from history, so a client that does not read holds a bounded amount of memory and
  never slows down writes or other streams. Control responses (created, canceled, progress)
  are always queued, and `wait_for_room` makes the request reader stop reading requests while
  they pile up, as etcd's bounded control channel does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.watch.watcher import FROM_KEY, Watcher

if TYPE_CHECKING:
    from raftkv.watch.watchable import WatchableStore

# etcd's per-stream response buffer (chanBufLen) and control buffer (ctrlStreamBufLen).
MAX_PENDING_RESPONSES = 128
CONTROL_SLACK = 16
MAX_PENDING_BYTES = 4 * 1024 * 1024
# Watchers on one stream, and the bytes of their keys and range ends.
MAX_WATCHERS = 10_000
MAX_KEY_BYTES = 16 * 1024 * 1024

AUTO_WATCH_ID = 0
# etcd's texts for refused creates, sent in `cancel_reason`.
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_WATCHER_RANGE = "mvcc: watcher range is empty"
# raftkv's own refusals.
TOO_MANY_WATCHERS = "raftkv: too many watchers on this watch stream (at most {})"
TOO_MANY_KEY_BYTES = (
    "raftkv: the watchers of this watch stream watch too many key bytes (at most {})"
)


@dataclass(slots=True)
class Outgoing:
    """A response waiting to be sent; its header carries only the revision."""

    response: rpc_pb2.WatchResponse
    # The watcher asked for large responses to be split into fragments.
    fragment: bool
    size: int
    # The span context of the traced write's watch.notify, when there is one.
    trace: Any = None


def _response(revision: int, **fields: object) -> rpc_pb2.WatchResponse:
    return rpc_pb2.WatchResponse(header=rpc_pb2.ResponseHeader(revision=revision), **fields)


class WatchStream:
    """The watchers of one Watch RPC; the API layer feeds it requests and drains `next()`."""

    def __init__(
        self,
        hub: WatchableStore,
        *,
        max_pending: int = MAX_PENDING_RESPONSES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_watchers: int = MAX_WATCHERS,
        max_key_bytes: int = MAX_KEY_BYTES,
    ) -> None:
        self._hub = hub
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_watchers = max_watchers
        self._max_key_bytes = max_key_bytes
        self._watchers: dict[int, Watcher] = {}
        self._key_bytes = 0
        self._next_id = 0
        self._pending: deque[Outgoing] = deque()
        self._pending_bytes = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False

    # ---- requests ----------------------------------------------------------------------------

    def create(self, request: rpc_pb2.WatchCreateRequest) -> None:
        """etcd's create: answer `created` (or a refusal), then start serving the watcher."""
        revision = self._hub.current_revision
        key, range_end = request.key, request.range_end
        if range_end and range_end != FROM_KEY and key >= range_end:
            self._refuse(EMPTY_WATCHER_RANGE, revision)
            return
        if len(self._watchers) >= self._max_watchers:
            self._refuse(TOO_MANY_WATCHERS.format(self._max_watchers), revision)
            return
        key_bytes = len(key) + len(range_end)
        if self._key_bytes + key_bytes > self._max_key_bytes:
            self._refuse(TOO_MANY_KEY_BYTES.format(self._max_key_bytes), revision)
            return
        watch_id = request.watch_id
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self._watchers:
            self._refuse(DUPLICATE_WATCH_ID, revision)
            return
        filters = set(request.filters)
        watcher = Watcher(
            id=watch_id,
            key=key,
            range_end=range_end,
            stream=self,
            next_rev=0,
            prev_kv=request.prev_kv,
            no_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
            no_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
            progress_notify=request.progress_notify,
            fragment=request.fragment,
        )
        self._watchers[watch_id] = watcher
        self._key_bytes += key_bytes
        self.push_control(_response(revision, watch_id=watch_id, created=True))
        self._hub.add(watcher, request.start_revision)

    def _refuse(self, reason: str, revision: int) -> None:
        self.push_control(
            _response(revision, watch_id=-1, created=True, canceled=True, cancel_reason=reason)
        )

    def cancel(self, watch_id: int) -> None:
        """Stop a watcher and answer `canceled`; an unknown ID gets no answer (as in etcd)."""
        watcher = self._watchers.pop(watch_id, None)
        if watcher is None:
            return
        self._key_bytes -= len(watcher.key) + len(watcher.range_end)
        self._hub.remove(watcher)
        self.push_control(_response(self._hub.current_revision, watch_id=watch_id, canceled=True))

    def request_progress(self) -> None:
        """etcd 3.4's progress request: one response for the whole stream, watch_id -1, with the
        current revision, sent at once even while some watchers are still catching up."""
        self.push_control(_response(self._hub.current_revision, watch_id=-1))

    # ---- the response queue ------------------------------------------------------------------

    @property
    def queued(self) -> tuple[int, int]:
        """(responses, bytes) waiting to be sent."""
        return len(self._pending), self._pending_bytes

    @property
    def full(self) -> bool:
        return (
            len(self._pending) >= self._max_pending
            or self._pending_bytes >= self._max_pending_bytes
        )

    def push(self, response: rpc_pb2.WatchResponse, fragment: bool, trace: Any = None) -> bool:
        """Queue an event or progress response; False (nothing queued) if the queue is full.
        `trace` is passed on opaquely to the sender (`Outgoing.trace`)."""
        if self.full:
            return False
        self._append(Outgoing(response, fragment, response.ByteSize(), trace))
        return True

    def push_control(self, response: rpc_pb2.WatchResponse) -> None:
        """Queue a created / canceled / progress response, even over the bound."""
        self._append(Outgoing(response, False, response.ByteSize()))

    def _append(self, item: Outgoing) -> None:
        self._pending.append(item)
        self._pending_bytes += item.size
        self._readable.set()

    async def next(self) -> Outgoing:
        """The next response to send; raises the error the stream was terminated with."""
        while not self._pending and self._error is None:
            self._readable.clear()
            await self._readable.wait()
        if self._error is not None:
            raise self._error
        was_full = self.full
        item = self._pending.popleft()
        self._pending_bytes -= item.size
        if was_full and not self.full:
            self._hub.stream_has_room()
        self._room.set()
        return item

    async def wait_for_room(self) -> None:
        """Block the request reader while the client leaves too many responses unread."""
        while len(self._pending) >= self._max_pending + CONTROL_SLACK and not self._closed:
            self._room.clear()
            await self._room.wait()

    # ---- ending ------------------------------------------------------------------------------

    def close(self) -> None:
        """The RPC ended: drop every watcher and every queued response."""
        if self._closed:
            return
        self._closed = True
        for watcher in self._watchers.values():
            self._hub.remove(watcher)
        self._watchers.clear()
        self._key_bytes = 0
        self._pending.clear()
        self._pending_bytes = 0
        self._room.set()

    def terminate(self, error: BaseException) -> None:
        """End the stream from the server side: `next()` raises `error` from now on."""
        self._error = error
        self.close()
        self._readable.set()
