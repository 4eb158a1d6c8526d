"""Watch coalescing: many client watchers of one range share one watch on the cluster.

Three layers, as in etcd's grpc-proxy:

- `ClientWatcher`: one watcher a client created on one of its Watch streams, with the watch ID
  the proxy gave it on that stream, and the first revision it still needs (`next_rev`).
- `Broadcast`: one upstream watch (a resumable `raftkv.client.Watch`, so it fails over between
  members without losing or repeating a revision) and the client watchers it feeds. Its
  `next_rev` is the first revision it has not received yet.
- `WatchHub`: the broadcasts, grouped by what makes two watches interchangeable — key,
  range_end, filters and prev_kv (the upstream watch is created with exactly those), and the
  client's auth token, which the upstream watch carries (the cluster checks every user itself).

Joining. A watcher starting "now" (start revision 0) joins a *live* broadcast of its group
(one that started "now", or merged with one that did) at that broadcast's `next_rev`:
everything before it was already sent, so "now" is there; a broadcast replaying history is
never "now". A watcher starting at revision R joins a broadcast whose `next_rev` is at most R, and
drops the events before R it is sent. A watcher whose revision is older than every broadcast's
position cannot join one without missing events; it gets a broadcast of its own that replays
history from R (catching up) — and merges into the shared one as soon as it has caught up:
after each upstream response, two broadcasts of a group at the same position (both have sent
everything before the same revision) become one; the smaller group of watchers moves and its
upstream watch is closed. Both see every event of the range, so positions meet at the first
event after the catch-up; watchers drop revisions below their own `next_rev`, so one handed
over never sees an event twice.

Per client stream the responses keep etcd's order through one FIFO queue: `created` first
(answered by the proxy itself for a watcher joining an established broadcast, with the
broadcast's revision), then events, then `canceled`. A compacted start revision or a refusal
from the cluster reaches every watcher of the broadcast as etcd would send it. Watch IDs are
per stream and chosen as etcd chooses them (lowest free from 0, or the client's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from raftkv.client import errors
from raftkv.client.transport import Transport
from raftkv.client.types import Event, Header, KeyValue
from raftkv.client.watch import Watch
from raftkv.observability.grpc_server import go_code_name
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.pb.mvccpb import kv_pb2
from raftkv.proxy.forward import forwarded_metadata
from raftkv.proxy.metrics import ProxyMetrics

__all__ = ["Broadcast", "ClientWatcher", "WatchHub", "WatchKey"]

log = logging.getLogger(__name__)

# key, range_end, filters, prev_kv, and the auth token the client's stream carries
WatchKey = tuple[bytes, bytes, tuple[int, ...], bool, str]

AUTO_WATCH_ID = 0
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_WATCHER_RANGE = "mvcc: watcher range is empty"
FROM_KEY = b"\0"
# A client that reads slower than its watches produce is cut off (it resumes elsewhere).
MAX_PENDING_RESPONSES = 10_000
# How long one attempt to create an upstream watch may take before it is started over.
OPEN_ATTEMPT_S = 30.0


def _kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def event_pb(event: Event) -> kv_pb2.Event:
    pb = kv_pb2.Event(type=int(event.type), kv=_kv_pb(event.kv))
    if event.prev_kv is not None:
        pb.prev_kv.CopyFrom(_kv_pb(event.prev_kv))
    return pb


def header_pb(header: Header, revision: int | None = None) -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(
        cluster_id=header.cluster_id,
        member_id=header.member_id,
        revision=header.revision if revision is None else revision,
        raft_term=header.raft_term,
    )


def cancel_reason(error: errors.EtcdError) -> str:
    """The error as etcd writes it into a watch's `cancel_reason`."""
    if error.code is grpc.StatusCode.UNKNOWN:
        return error.message
    return f"rpc error: code = {go_code_name(error.code)} desc = {error.message}"


class _WithToken:
    """The shared transport, opening streams with one client's auth token.

    Watchers share an upstream watch only with watchers of the same token, so the cluster
    checks each user's rights as it would without the proxy. The proxy has no credentials to
    renew a token with: a watch whose token expires ends with the cluster's error.
    """

    def __init__(self, transport: Transport, token: str) -> None:
        self._transport = transport
        self.token = token

    def metadata(self, *, require_leader: bool = False, token: str | None = None) -> Any:
        return self._transport.metadata(require_leader=require_leader, token=token or self.token)

    def wants_new_token(self, error: errors.EtcdError) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ClientWatcher:
    """One watcher of one client stream."""

    __slots__ = (
        "announced",
        "broadcast",
        "buffer",
        "created_header",
        "id",
        "key",
        "next_rev",
        "progress_notify",
        "refusal",
        "stream",
    )

    def __init__(
        self, stream: ClientStream, watch_id: int, key: WatchKey, start_rev: int, progress: bool
    ) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = key
        self.next_rev = start_rev
        self.progress_notify = progress
        self.broadcast: Broadcast | None = None
        # Set once the watcher exists upstream: the header of its `created` response.
        self.created_header: rpc_pb2.ResponseHeader | None = None
        # Set when the cluster refused the watch instead: the response that says so.
        self.refusal: rpc_pb2.WatchResponse | None = None
        # `created` has been sent; until then the watcher's responses wait in `buffer`.
        self.announced = False
        self.buffer: list[rpc_pb2.WatchResponse] = []

    @property
    def ready(self) -> bool:
        return self.created_header is not None

    def send_created(self, header: rpc_pb2.ResponseHeader) -> None:
        self.created_header = header
        self.stream.announce()

    def send(self, response: rpc_pb2.WatchResponse) -> None:
        if self.announced:
            self.stream.send(response)
        else:
            self.buffer.append(response)

    def deliver(
        self, header: rpc_pb2.ResponseHeader, events: Sequence[kv_pb2.Event], next_rev: int
    ) -> int:
        """Send the events this watcher has not seen; returns how many were sent."""
        if events[0].kv.mod_revision < self.next_rev:
            events = [e for e in events if e.kv.mod_revision >= self.next_rev]
        if events:
            self.send(rpc_pb2.WatchResponse(header=header, watch_id=self.id, events=events))
        self.next_rev = max(self.next_rev, next_rev)
        return len(events)

    def progress(self, header: rpc_pb2.ResponseHeader, next_rev: int) -> None:
        if self.progress_notify and next_rev >= self.next_rev:
            self.send(rpc_pb2.WatchResponse(header=header, watch_id=self.id))
        self.next_rev = max(self.next_rev, next_rev)

    def end(self, response: rpc_pb2.WatchResponse) -> None:
        """The cluster ended this watcher: tell the client and forget it."""
        self.stream.forget(self.id)
        if self.ready:
            self.send(response)
        else:
            self.refusal = response
            self.stream.announce()


class Broadcast:
    """One upstream watch feeding the client watchers of one group."""

    def __init__(self, hub: WatchHub, key: WatchKey, start_rev: int) -> None:
        self.hub = hub
        self.key = key
        self.start_rev = start_rev
        self.receivers: set[ClientWatcher] = set()
        # 0 until the upstream watch is created; then the first revision not received yet.
        self.next_rev = 0
        self.header: Header | None = None
        self.stopped = False
        self.task: asyncio.Task[None] | None = None
        self.seq = next(hub.sequence)
        # Started "now", or merged with one that was: it is not replaying history.
        self.live = start_rev == 0

    @property
    def established(self) -> bool:
        return self.next_rev > 0

    def can_join(self, start_rev: int) -> bool:
        if start_rev == 0:
            # "Now" is only where a live broadcast is: one that is replaying history would
            # send a watcher from "now" events older than its creation.
            return self.live
        if self.established:
            return self.next_rev <= start_rev
        return 0 < self.start_rev <= start_rev

    def join(self, watcher: ClientWatcher) -> None:
        self.receivers.add(watcher)
        watcher.broadcast = self
        if self.established and not watcher.ready:
            if watcher.next_rev == 0:
                watcher.next_rev = self.next_rev
            watcher.send_created(self.current_header())

    def current_header(self) -> rpc_pb2.ResponseHeader:
        assert self.header is not None
        return header_pb(self.header, max(self.header.revision, self.next_rev - 1))

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"raftkv-proxy-watch-{self.key[0]!r}"
        )

    def _create_request(self) -> rpc_pb2.WatchCreateRequest:
        key, range_end, filters, prev_kv, _ = self.key
        return rpc_pb2.WatchCreateRequest(
            key=key,
            range_end=range_end,
            start_revision=self.start_rev,
            filters=list(filters),
            prev_kv=prev_kv,
            # Forwarded to the watchers that asked for progress notifications.
            progress_notify=True,
        )

    async def _open(self) -> Watch:
        while True:
            transport = self.hub.transport
            token = self.key[4]
            if token:
                transport = _WithToken(transport, token)  # type: ignore[assignment]
            watch = Watch(transport, self._create_request(), require_leader=True)
            try:
                return await watch.start(timeout=OPEN_ATTEMPT_S)
            except errors.UnavailableError:
                log.info("no cluster member could create a watch yet; trying again")

    async def _run(self) -> None:
        watch: Watch | None = None
        try:
            watch = await self._open()
            assert watch.header is not None
            log.info(
                "upstream watch on %s created: key %r, from revision %d, %d watchers",
                watch.endpoint,
                self.key[0],
                watch.next_revision,
                len(self.receivers),
            )
            self.created(watch.header, watch.next_revision)
            while not self.stopped:
                batch = await anext(watch)
                events = [event_pb(e) for e in batch.events]
                self.fan_out(batch.header, events, watch.next_revision)
        except StopAsyncIteration:
            pass
        except errors.CompactedError as error:
            self.end_all(
                rpc_pb2.ResponseHeader(), canceled=True, compact_revision=error.compact_revision
            )
        except errors.EtcdError as error:
            self.end_all(None, canceled=True, cancel_reason=cancel_reason(error))
        except Exception:
            log.exception("watch broadcast failed")
            self.end_all(None, canceled=True, cancel_reason="grpcproxy: internal error")
        finally:
            if watch is not None:
                await watch.cancel()

    def created(self, header: Header, next_rev: int) -> None:
        """The upstream watch exists: the watchers waiting for it are created too."""
        self.header = header
        self.next_rev = next_rev
        created = header_pb(header)
        for watcher in list(self.receivers):
            if watcher.next_rev == 0:
                watcher.next_rev = next_rev
            watcher.send_created(created)
        self.hub.coalesce(self)

    def fan_out(self, header: Header, events: list[kv_pb2.Event], next_rev: int) -> None:
        """One upstream response (events, or a progress notification if there are none)."""
        self.header = header
        self.next_rev = next_rev
        pb_header = header_pb(header)
        if events:
            sent = 0
            for watcher in list(self.receivers):
                sent += watcher.deliver(pb_header, events, self.next_rev)
            # Events the cluster sent once and the proxy delivered more than once.
            self.hub.metrics.events_coalescing.inc(max(sent - len(events), 0))
        else:
            for watcher in list(self.receivers):
                watcher.progress(pb_header, self.next_rev)
        self.hub.coalesce(self)

    def end_all(self, header: rpc_pb2.ResponseHeader | None, **fields: Any) -> None:
        """The cluster ended the upstream watch for good: end every watcher the same way."""
        log.info("upstream watch of key %r ended: %s", self.key[0], fields)
        for watcher in list(self.receivers):
            if header is not None:
                response_header = header
            elif self.header is not None:
                response_header = self.current_header()
            else:
                response_header = rpc_pb2.ResponseHeader()
            if watcher.ready:
                response = rpc_pb2.WatchResponse(
                    header=response_header, watch_id=watcher.id, **fields
                )
            else:
                # Refused at creation: etcd answers created-and-canceled with ID -1.
                response = rpc_pb2.WatchResponse(
                    header=response_header, watch_id=-1, created=True, **fields
                )
            watcher.end(response)
        self.receivers.clear()
        self.hub.discard(self)


class WatchHub:
    """Every broadcast of the proxy, grouped by `WatchKey`."""

    def __init__(self, transport: Transport, metrics: ProxyMetrics) -> None:
        self.transport = transport
        self.metrics = metrics
        self._groups: dict[WatchKey, list[Broadcast]] = {}
        self.sequence = itertools.count()
        metrics.read_watch_state(self.watcher_count, self.upstream_count, self.coalescing_count)

    # -- state, read by the metrics ---------------------------------------------------------------

    def broadcasts(self) -> list[Broadcast]:
        # Copies first: the metrics thread calls this while the event loop changes the groups.
        return [b for group in list(self._groups.values()) for b in list(group)]

    def watcher_count(self) -> int:
        return sum(len(b.receivers) for b in self.broadcasts())

    def upstream_count(self) -> int:
        return len(self.broadcasts())

    def coalescing_count(self) -> int:
        return sum(max(len(b.receivers) - 1, 0) for b in self.broadcasts())

    # -- membership -------------------------------------------------------------------------------

    def add(self, watcher: ClientWatcher) -> None:
        group = self._groups.setdefault(watcher.key, [])
        fits = [b for b in group if b.can_join(watcher.next_rev)]
        if fits:
            # The one furthest on: the watcher has the least history to wait through there.
            max(fits, key=lambda b: (b.established, b.next_rev)).join(watcher)
            return
        broadcast = Broadcast(self, watcher.key, watcher.next_rev)
        group.append(broadcast)
        broadcast.join(watcher)
        broadcast.start()

    def remove(self, watcher: ClientWatcher) -> None:
        broadcast = watcher.broadcast
        if broadcast is None:
            return
        watcher.broadcast = None
        broadcast.receivers.discard(watcher)
        if not broadcast.receivers:
            self._stop(broadcast)

    def coalesce(self, broadcast: Broadcast) -> None:
        """Merge `broadcast` with an established one of its group at the same position.

        Only equal positions merge: a watcher moved to a broadcast that is behind would wait
        for it to replay history it has seen. The smaller group moves (on a tie, the younger).
        """
        if broadcast.stopped:
            return
        for other in self._groups.get(broadcast.key, ()):
            if other is broadcast or not other.established or other.next_rev != broadcast.next_rev:
                continue
            source, target = sorted((broadcast, other), key=lambda b: (len(b.receivers), -b.seq))
            log.info(
                "merged %d watchers of key %r into another upstream watch at revision %d",
                len(source.receivers),
                broadcast.key[0],
                broadcast.next_rev,
            )
            for watcher in source.receivers:
                watcher.broadcast = target
            target.receivers |= source.receivers
            target.live = target.live or source.live  # same position: both are live now
            source.receivers.clear()
            self._stop(source)
            return

    def discard(self, broadcast: Broadcast) -> None:
        """Forget a broadcast whose upstream watch has ended on its own."""
        broadcast.stopped = True
        group = self._groups.get(broadcast.key)
        if group is not None and broadcast in group:
            group.remove(broadcast)
            if not group:
                del self._groups[broadcast.key]

    def _stop(self, broadcast: Broadcast) -> None:
        self.discard(broadcast)
        task = broadcast.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = [b.task for b in self.broadcasts() if b.task is not None]
        for broadcast in self.broadcasts():
            self._stop(broadcast)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Overflow(Exception):
    pass


class ClientStream:
    """One client's Watch call: its watchers by ID and the queue of responses to send."""

    def __init__(self, hub: WatchHub, token: str = "") -> None:
        self.hub = hub
        self.token = token
        self.watchers: dict[int, ClientWatcher] = {}
        self._queue: asyncio.Queue[rpc_pb2.WatchResponse] = asyncio.Queue()
        # Creates not answered yet, in request order: clients (etcd's Go client among them)
        # pair `created` responses with their requests by order.
        self._creating: deque[ClientWatcher | rpc_pb2.WatchResponse] = deque()
        self._next_id = 0
        self.overflowed = False

    def send(self, response: rpc_pb2.WatchResponse) -> None:
        if self._queue.qsize() >= MAX_PENDING_RESPONSES:
            self.overflowed = True
        self._queue.put_nowait(response)

    async def next(self) -> rpc_pb2.WatchResponse:
        if self.overflowed:
            raise _Overflow
        return await self._queue.get()

    def forget(self, watch_id: int) -> None:
        self.watchers.pop(watch_id, None)

    def announce(self) -> None:
        """Send the answers to creates that are due, in the order the creates came."""
        while self._creating:
            head = self._creating[0]
            if isinstance(head, rpc_pb2.WatchResponse):
                self.send(head)
            elif head.refusal is not None:
                self.send(head.refusal)
            elif head.created_header is not None:
                self.send(
                    rpc_pb2.WatchResponse(
                        header=head.created_header, watch_id=head.id, created=True
                    )
                )
                head.announced = True
                for response in head.buffer:
                    self.send(response)
                head.buffer.clear()
            else:
                return
            self._creating.popleft()

    def handle(self, request: rpc_pb2.WatchRequest) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            self._create(request.create_request)
        elif kind == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            self._progress()

    def _refuse(self, reason: str) -> None:
        self._creating.append(
            rpc_pb2.WatchResponse(
                header=self._header(),
                watch_id=-1,
                created=True,
                canceled=True,
                cancel_reason=reason,
            )
        )
        self.announce()

    def _create(self, create: rpc_pb2.WatchCreateRequest) -> None:
        key, range_end = create.key, create.range_end
        if range_end and range_end != FROM_KEY and key >= range_end:
            self._refuse(EMPTY_WATCHER_RANGE)
            return
        watch_id = create.watch_id
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watchers:
            self._refuse(DUPLICATE_WATCH_ID)
            return
        filters = tuple(sorted(set(create.filters)))
        group: WatchKey = (key, range_end, filters, create.prev_kv, self.token)
        watcher = ClientWatcher(
            self, watch_id, group, create.start_revision, create.progress_notify
        )
        self.watchers[watch_id] = watcher
        self._creating.append(watcher)
        self.hub.add(watcher)

    def _cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return  # etcd answers nothing for an unknown ID
        broadcast = watcher.broadcast
        header = (
            broadcast.current_header()
            if broadcast is not None and broadcast.header is not None
            else self._header()
        )
        self.hub.remove(watcher)
        if not watcher.ready:  # canceled before the cluster created it: created, then canceled
            watcher.created_header = header
        watcher.send(rpc_pb2.WatchResponse(header=header, watch_id=watch_id, canceled=True))
        self.announce()

    def _header(self) -> rpc_pb2.ResponseHeader:
        """A header for a response about no particular watcher: the stream's latest position."""
        known = [
            w.broadcast
            for w in self.watchers.values()
            if w.broadcast is not None and w.broadcast.header is not None
        ]
        if not known:
            return rpc_pb2.ResponseHeader()
        latest = max(known, key=lambda b: b.next_rev)
        return latest.current_header()

    def _progress(self) -> None:
        """etcd 3.4's answer to a progress request: one response, watch ID -1. Its revision is
        the lowest position of the stream's watchers: everything up to it has been sent."""
        created = [w for w in self.watchers.values() if w.ready]
        header = self._header()
        if created:
            header.revision = min(w.next_rev for w in created) - 1
        self.send(rpc_pb2.WatchResponse(header=header, watch_id=-1))

    def close(self) -> None:
        for watcher in list(self.watchers.values()):
            self.hub.remove(watcher)
        self.watchers.clear()


async def _read_requests(
    requests: AsyncIterator[rpc_pb2.WatchRequest], stream: ClientStream
) -> None:
    async for request in requests:
        stream.handle(request)


async def serve_watch(
    hub: WatchHub,
    requests: AsyncIterator[rpc_pb2.WatchRequest],
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[rpc_pb2.WatchResponse]:
    """The Watch RPC of the proxy: one client stream, any number of watchers on it."""
    token = next((v for k, v in forwarded_metadata(context) if k == "token"), "")
    stream = ClientStream(hub, token)
    reader = asyncio.get_running_loop().create_task(_read_requests(requests, stream))
    try:
        while True:
            try:
                response = await stream.next()
            except _Overflow:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "grpcproxy: watch client reads too slowly"
                )
            yield response
    finally:
        reader.cancel()
        stream.close()
