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

Event responses of the write path arrive pre-encoded (`push_encoded`): the watchable store
encodes a revision's events once for all the watchers that get the same ones, and the handler
sends header + watch ID + those bytes, so fan-out costs no protobuf work per watcher. Once a
stream lags (`MERGE_AFTER_PENDING` responses queued), a watcher whose previous event response
is still queued gets the new revision's events appended to it, up to `MERGE_LIMIT_BYTES`, as
etcd batches a lagging watcher's revisions: fewer, larger writes, each revision still whole and
in order. Nothing is merged across a control or progress response queued after it, so the
order a client sees those in relative to the events is unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb.kv_pb2 import Event
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
# A lagging watcher's queued event response takes more revisions up to this size, once this
# many responses wait on its stream (a client that keeps up gets one response per revision).
MERGE_LIMIT_BYTES = 64 * 1024
MERGE_AFTER_PENDING = 32

AUTO_WATCH_ID = 0
# etcd's texts for refused creates, sent in `cancel_reason`.
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_WATCHER_RANGE = "mvcc: watcher range is empty"
# raftkv's own refusals.
TOO_MANY_WATCHERS = "raftkv: too many watchers on this watch stream (at most {})"
TOO_MANY_KEY_BYTES = (
    "raftkv: the watchers of this watch stream watch too many key bytes (at most {})"
)


# Wire tags of WatchResponse fields: header (1, bytes), watch_id (2, varint), events (11, bytes).
_HEADER_TAG = b"\x0a"
_WATCH_ID_TAG = b"\x10"
_EVENTS_TAG = b"\x5a"


def _varint(value: int) -> bytes:
    """Protobuf's varint; an int64 below 0 takes ten bytes, as two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_events(events: list[Event]) -> bytes:
    """The `events` field of a WatchResponse holding `events`, as bytes to reuse."""
    return rpc_pb2.WatchResponse(events=events).SerializeToString()


@dataclass(slots=True, eq=False)
class Outgoing:
    """A response waiting to be sent: a message whose header carries only the revision, or
    (`message` None) an event response kept as its encoded `events` field."""

    message: rpc_pb2.WatchResponse | None
    # The watcher asked for large responses to be split into fragments.
    fragment: bool
    size: int
    # The span context of the traced write's watch.notify, when there is one.
    trace: Any = None
    revision: int = 0
    watch_id: int = 0
    events: list[bytes] = field(default_factory=list)
    event_count: int = 0
    # Control/progress responses queued on the stream before this one (see `push_encoded`).
    epoch: int = 0
    # The watcher whose later events may still be added to this encoded response.
    owner: Watcher | None = None

    @classmethod
    def of(
        cls, response: rpc_pb2.WatchResponse, fragment: bool = False, trace: Any = None
    ) -> Outgoing:
        return cls(
            response,
            fragment,
            response.ByteSize(),
            trace,
            revision=response.header.revision,
            watch_id=response.watch_id,
            event_count=len(response.events),
        )

    @property
    def response(self) -> rpc_pb2.WatchResponse:
        """The response as a message (decoded for an encoded one); its header has the revision."""
        if self.message is None:
            header = rpc_pb2.ResponseHeader(revision=self.revision).SerializeToString()
            return rpc_pb2.WatchResponse.FromString(self.wire(header))
        return self.message

    def wire(self, header: bytes) -> bytes:
        """The response as sent, `header` (an encoded ResponseHeader, whose revision should be
        `revision`) merged into its header; call it once, when sending."""
        message = self.message
        if message is not None:
            message.header.MergeFromString(header)
            return message.SerializeToString()
        parts = [_HEADER_TAG, _varint(len(header)), header]
        if self.watch_id:
            parts += [_WATCH_ID_TAG, _varint(self.watch_id)]
        return b"".join(parts + self.events)


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
        # The queued encoded response of each watcher that has one, and how many control or
        # progress responses were queued so far (a merge must not jump over one).
        self._mergeable: dict[Watcher, Outgoing] = {}
        self._epoch = 0
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
        self._epoch += 1
        self._append(Outgoing.of(response, fragment, trace))
        return True

    def push_encoded(
        self, watcher: Watcher, revision: int, events: bytes, count: int, trace: Any = None
    ) -> bool:
        """Queue `count` events of `revision` for `watcher`, encoded by `encode_events`: added
        to its queued response when it has one (see the module docstring), else a new one.
        False (nothing queued) if the queue is full."""
        if self.full:
            return False
        queued = self._mergeable.get(watcher)
        if (
            queued is not None
            and len(self._pending) >= MERGE_AFTER_PENDING
            and queued.epoch == self._epoch
            and queued.size + len(events) <= MERGE_LIMIT_BYTES
        ):
            queued.events.append(events)
            queued.event_count += count
            queued.revision = revision
            queued.size += len(events)
            self._pending_bytes += len(events)
            return True
        item = Outgoing(
            None,
            watcher.fragment,
            len(events) + 16,
            trace,
            revision=revision,
            watch_id=watcher.id,
            events=[events],
            event_count=count,
            epoch=self._epoch,
            owner=watcher,
        )
        self._mergeable[watcher] = item
        self._append(item)
        return True

    def push_control(self, response: rpc_pb2.WatchResponse) -> None:
        """Queue a created / canceled / progress response, even over the bound."""
        self._epoch += 1
        self._append(Outgoing.of(response))

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
        if item.owner is not None and self._mergeable.get(item.owner) is item:
            del self._mergeable[item.owner]
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
        self._mergeable.clear()
        self._pending_bytes = 0
        self._room.set()

    def terminate(self, error: BaseException) -> None:
        """End the stream from the server side: `next()` raises `error` from now on."""
        self._error = error
        self.close()
        self._readable.set()
