"""etcd's Watch service: one bidirectional stream per call, many watchers per stream.

Two tasks serve a call, as in etcd: a reader that applies the client's requests (create,
cancel, progress) to the member's `WatchStream`, and the handler itself, which sends the
stream's queued responses. gRPC's flow control makes `write` wait while the client does not
read; the queue then fills up and the watchable store moves the stream's watchers to
catching up from history, so a slow client costs a bounded amount of memory.

Responses get the full etcd header here (cluster, member, term); the revision in it is the
watch package's, kept as is even when it is 0 (etcd's compaction cancel). Event responses come
pre-encoded from the watch package and are written as bytes: the Watch method is registered
with a response serializer that passes bytes through (`add_to_server`), and the header bytes
are encoded once per revision and term for all streams (`HeaderEncoder`). Watchers created
with `fragment=true` get large responses split at `max_response_bytes`, which is etcd's
limit: --max-request-bytes plus the gRPC overhead allowance.

A create needs read access to the whole watched range (etcd checks it against the stream's
token at each create); a refused one is answered created-and-canceled with id -1 and the error in
`cancel_reason`, as etcd does, and the stream goes on.

A call made with the `hasleader=true` metadata fails at once with "etcdserver: no leader"
when the member knows no leader, and is ended with that error once the member has been
without a leader for more than three election timeouts, as etcd 3.4 does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from raftkv.api.auth import watch_refusal
from raftkv.api.decoding import abort_if_undecodable
from raftkv.api.handlers import abort_with, credentials, requires_leader
from raftkv.auth import AuthError, Credentials
from raftkv.node.errors import NoLeaderError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.watch import Outgoing, WatchStream, split_fragments

log = logging.getLogger(__name__)

# etcd's maxNoLeaderCnt: leaderless election timeouts tolerated before streams are ended.
MAX_NO_LEADER_COUNT = 3


class HeaderEncoder:
    """Encoded ResponseHeaders filled by `fill` (MemberServer.fill_header), the revision kept as
    given even when 0; the last one is reused while its revision and term are unchanged (the
    cluster and member IDs are fixed by the time watches are served)."""

    def __init__(self, fill: Callable[[rpc_pb2.ResponseHeader, int], None]) -> None:
        self._fill = fill
        self._key: tuple[int, int] | None = None
        self._bytes = b""

    def header(self, revision: int, term: int) -> bytes:
        key = (revision, term)
        if key != self._key:
            header = rpc_pb2.ResponseHeader()
            self._fill(header, revision)
            header.revision = revision
            self._bytes = header.SerializeToString()
            self._key = key
        return self._bytes


def _serialize_response(response: rpc_pb2.WatchResponse | bytes) -> bytes:
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def add_to_server(service: WatchService, server: grpc.aio.Server) -> None:
    """Register the Watch service like the generated `add_WatchServicer_to_server`, but with a
    response serializer that sends pre-encoded responses (bytes) as they are."""
    handlers = {
        "Watch": grpc.stream_stream_rpc_method_handler(
            service.Watch,
            request_deserializer=rpc_pb2.WatchRequest.FromString,
            response_serializer=_serialize_response,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("etcdserverpb.Watch", handlers),)
    )
    server.add_registered_method_handlers("etcdserverpb.Watch", handlers)
    service.writes_bytes = True


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, server: MemberServer, *, max_response_bytes: int) -> None:
        self.server = server
        self.max_response_bytes = max_response_bytes
        self._headers = HeaderEncoder(server.fill_header)
        # Set by `add_to_server`; registered the generated way, the service writes messages.
        self.writes_bytes = False
        self._leader_bound: set[WatchStream] = set()
        self._monitor: asyncio.Task[None] | None = None

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        needs_leader = requires_leader(context)
        if needs_leader:
            try:
                self.server.node.require_leader()
            except NoLeaderError as error:
                await abort_with(context, error)
        stream = self.server.watchable.open_stream()
        if needs_leader:
            self._bind_to_leader(stream)
        caller = credentials(context)
        reader = asyncio.create_task(self._read_requests(context, stream, caller))
        try:
            while True:
                try:
                    item = await stream.next()
                except Exception as error:
                    await abort_with(context, error)
                    raise  # unreachable: abort raises
                header = self._headers.header(item.revision, self.server.node.term)
                with self._send_span(item):
                    if item.fragment:
                        response = item.response
                        response.header.MergeFromString(header)
                        for piece in split_fragments(response, self.max_response_bytes):
                            await context.write(piece)
                    elif self.writes_bytes:
                        await context.write(item.wire(header))
                    else:
                        response = item.response
                        response.header.MergeFromString(header)
                        await context.write(response)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._leader_bound.discard(stream)
            stream.close()

    def _send_span(self, item: Outgoing) -> contextlib.AbstractContextManager[Any]:
        """A watch.send span (under the write's watch.notify) for a traced write's events."""
        if item.trace is None:  # set only when the member traces
            return contextlib.nullcontext()
        tracing = self.server.tracing
        assert tracing is not None
        attributes = {"watch.id": item.watch_id, "watch.events": item.event_count}
        return tracing.span_under(item.trace, "watch.send", attributes)

    async def _read_requests(
        self, context: grpc.aio.ServicerContext, stream: WatchStream, caller: Credentials
    ) -> None:
        """Apply the client's requests until it half-closes (the stream then stays open for
        responses, as in etcd) or the call ends."""
        try:
            while True:
                await stream.wait_for_room()
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                await abort_if_undecodable(request, context)
                kind = request.WhichOneof("request_union")
                if kind == "create_request":
                    create = request.create_request
                    try:
                        await self.server.auth.check_watch(create.key, create.range_end, caller)
                    except AuthError as error:
                        revision = self.server.watchable.current_revision
                        stream.push_control(watch_refusal(error, revision))
                        continue
                    stream.create(create)
                elif kind == "cancel_request":
                    stream.cancel(request.cancel_request.watch_id)
                elif kind == "progress_request":
                    stream.request_progress()
                # An empty request is ignored, as etcd ignores it.
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("watch stream request reader failed: %s", error)
            stream.terminate(error)

    # ---- hasleader streams -------------------------------------------------------------------

    def _bind_to_leader(self, stream: WatchStream) -> None:
        self._leader_bound.add(stream)
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.create_task(self._monitor_leader(), name="watch-leader")

    async def _monitor_leader(self) -> None:
        """etcd's leader monitor: check once per election timeout while hasleader streams
        exist; after more than MAX_NO_LEADER_COUNT leaderless checks end them all."""
        interval = self.server.config.election_timeout_ms / 1000
        leaderless = 0
        while self._leader_bound:
            await asyncio.sleep(interval)
            leaderless = leaderless + 1 if self.server.node.leader == 0 else 0
            if leaderless > MAX_NO_LEADER_COUNT:
                for stream in self._leader_bound:
                    stream.terminate(NoLeaderError())
                self._leader_bound.clear()
