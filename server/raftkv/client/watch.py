"""Watches that survive member failures without losing or repeating an event.

A `Watch` owns one gRPC watch stream at a time and a background task that reads it into a queue,
so iterating is cancellation-safe (`asyncio.wait_for(anext(watch), 1)` does not break the stream).
The task remembers the next revision it still owes the caller:

- after events: the last event's revision + 1;
- after a progress notification: the notified revision + 1 (everything up to it was sent);
- after the creation of a watch that started "now": the creation revision + 1.

When the stream fails (member killed, connection reset, "no leader" from a member cut off from
the cluster) the task opens a new stream on another endpoint and re-creates the watch from that
revision, so the caller sees each revision exactly once and in order. If that revision has been
compacted meanwhile, continuing would silently skip events, so iteration raises `CompactedError`
carrying the compact revision instead.

Streams are opened with the `hasleader=true` metadata (clientv3's `WithRequireLeader`) by default:
a member that loses its leader then ends the stream instead of serving a watch that can no
longer see new writes, and the watch moves to a member that can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import grpc

from raftkv.client import errors
from raftkv.client.transport import Endpoint, Transport
from raftkv.client.types import Event, Header, WatchBatch
from raftkv.pb.etcdserverpb import rpc_pb2

__all__ = ["Watch"]

# Stream failures after which the watch resumes elsewhere: the member went away or the stream
# was cut (etcd's clients treat both codes as transient for watches).
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
_MAX_PAUSE_S = 2.0


class _Reconnect(Exception):
    """The current stream is unusable; open a new one and resume."""


class Watch:
    """A running watch: `async with client.watch(...) as w: async for batch in w: ...`.

    Iterating yields `WatchBatch`es (an empty one is a progress notification); `events()` yields
    single `Event`s. Iteration ends after `cancel()` and raises the error that stopped the watch
    (`CompactedError`, `PermissionDeniedError`, ...).
    """

    def __init__(
        self,
        transport: Transport,
        create: rpc_pb2.WatchCreateRequest,
        *,
        require_leader: bool = True,
    ) -> None:
        self._transport = transport
        self._create = create
        self._require_leader = require_leader
        self._next_rev = create.start_revision
        self._queue: asyncio.Queue[WatchBatch | BaseException | None] = asyncio.Queue()
        self._created = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self._finished = False
        self.endpoint: Endpoint | None = None
        self.header: Header | None = None
        # Times the watch was re-created on a new stream after its first creation.
        self.resumes = 0
        self._stream_created = False

    @property
    def next_revision(self) -> int:
        """The first revision not delivered yet (0 before a watch "from now" is created)."""
        return self._next_rev

    async def start(self, timeout: float | None = None) -> Watch:
        """Start the watch and wait until the server has created it (at most `timeout`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="raftkv-watch")
            self._transport.track(self)
        created = asyncio.ensure_future(self._created.wait())
        try:
            done, _ = await asyncio.wait(
                {created, self._task},
                timeout=self._transport.timeout if timeout is None else timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            created.cancel()
        if self._created.is_set():
            return self
        if self._task in done:
            item = self._queue.get_nowait()
            self._finished = True
            if isinstance(item, BaseException):
                raise item
        await self.cancel()
        raise errors.UnavailableError("watch could not be created on any endpoint")

    async def cancel(self) -> None:
        """Stop watching; iteration then ends after the batches already received."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._queue.put_nowait(None)

    async def shutdown(self) -> None:
        """The client is closing: same as `cancel()`."""
        await self.cancel()

    async def request_progress(self) -> None:
        """Ask for a progress notification (an empty batch carrying the current revision)."""
        call = self._call
        if call is None:
            return  # between streams: there is no server to ask until the watch resumes
        request = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
        # A stream that just ended is being replaced; the request is moot then.
        with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
            async with self._write_lock:
                await call.write(request)

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            await self.start()
        item = await self._queue.get()
        if isinstance(item, WatchBatch):
            return item
        self._finished = True
        if item is None:
            raise StopAsyncIteration
        raise item

    async def events(self) -> AsyncIterator[Event]:
        """The events one by one, skipping progress notifications."""
        async for batch in self:
            for event in batch.events:
                yield event

    # -- the stream task -------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    await self._serve_stream()
                except _Reconnect:
                    pass
                except errors.UnavailableError:
                    pass  # no endpoint reachable right now
                attempt = 0 if self._stream_created else attempt + 1
                await asyncio.sleep(min(0.05 * 2**attempt, _MAX_PAUSE_S))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the error ends the watch; the reader sees it
            self._queue.put_nowait(e)

    async def _serve_stream(self) -> None:
        transport = self._transport
        self._stream_created = False
        deadline = transport.deadline(None)
        endpoint = await transport.stream_endpoint(deadline)
        call = transport.stubs(endpoint).watch.Watch(
            metadata=transport.metadata(require_leader=self._require_leader)
        )
        self._call, self.endpoint = call, endpoint
        token = transport.token
        create = rpc_pb2.WatchCreateRequest()
        create.CopyFrom(self._create)
        create.start_revision = self._next_rev
        fragments: list[Event] = []
        try:
            async with self._write_lock:
                await call.write(rpc_pb2.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise _Reconnect
                self._handle(resp, fragments)
        except grpc.aio.AioRpcError as e:
            err = errors.from_rpc_error(e)
            if transport.wants_new_token(err):
                await transport.refresh_token(token)
                raise _Reconnect from None
            if err.code in _TRANSIENT:
                transport.mark_failed(endpoint)
                raise _Reconnect from None
            raise err from None
        except asyncio.InvalidStateError:
            # The stream ended before the create request could be written.
            transport.mark_failed(endpoint)
            raise _Reconnect from None
        finally:
            self._call = None
            call.cancel()

    def _handle(self, resp: rpc_pb2.WatchResponse, fragments: list[Event]) -> None:
        header = Header.from_pb(resp.header)
        self.header = header
        if resp.compact_revision:
            raise errors.CompactedError(compact_revision=resp.compact_revision)
        if resp.canceled:
            err = errors.from_reason(resp.cancel_reason)
            if err.code is grpc.StatusCode.UNAVAILABLE:
                raise _Reconnect
            raise err
        if resp.created:
            if self._next_rev == 0:
                self._next_rev = header.revision + 1
            if self._created.is_set():
                self.resumes += 1
            self._stream_created = True
            self._created.set()
            return
        fragments.extend(Event.from_pb(e) for e in resp.events)
        if resp.fragment:
            return
        events = tuple(fragments)
        fragments.clear()
        if events:
            self._next_rev = events[-1].revision + 1
        else:
            self._next_rev = max(self._next_rev, header.revision + 1)
        self._queue.put_nowait(WatchBatch(header, events))
