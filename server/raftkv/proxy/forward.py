"""Forwarding one client call to the cluster, with raftkv's client rules for failover and retry.

Every forwarded unary call goes through `raftkv.client.transport.Transport.unary`, so the proxy
moves between cluster endpoints exactly as raftkv's client does: reads are retried on another
member after any UNAVAILABLE, writes only when they provably never left the proxy (a write cut
off after sending may have been applied; the client gets the error and decides). Which methods
are reads is the table below, the one etcd's client uses. Writes go to the leader
(`leader.LeaderTracker`), so a leader's death is a failure to connect, which is safe to retry,
instead of a follower's ambiguous timeout.

What the caller sent travels with the call: its `token` (auth), `hasleader` and `traceparent`
metadata replace the proxy's own, and the time left of its deadline bounds every attempt (no
deadline means none upstream either, as for a lock that waits by nature). An upstream error
goes back with the cluster's status code and message unchanged, so clients that match etcd's
texts byte for byte see no difference.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from raftkv.client import errors
from raftkv.client.transport import Retry, Stubs, Transport, UnaryMethod
from raftkv.pb.etcdserverpb import rpc_pb2
from raftkv.proxy.leader import LeaderTracker

__all__ = ["Forwarder", "abort_with", "forwarded_metadata", "retry_class"]

Metadata = tuple[tuple[str, str], ...]
# A stub method chosen once the endpoint is known: `lambda s: s.kv.Range`.
StubMethod = Callable[[Stubs], Callable[..., Any]]

# grpc's text for a call that failed to connect (`raftkv.client.transport.never_sent`).
_CONNECT_FAILED = "failed to connect to all addresses"

PASSED_METADATA = frozenset({"token", "hasleader", "traceparent"})

# Calls etcd's client retries on any UNAVAILABLE (they change nothing); every other call is a
# mutation. Txn and Alarm depend on the request (`retry_class`).
IMMUTABLE_METHODS = frozenset(
    {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Auth/AuthStatus",
        "/etcdserverpb.Auth/Authenticate",
        "/etcdserverpb.Auth/UserGet",
        "/etcdserverpb.Auth/UserList",
        "/etcdserverpb.Auth/RoleGet",
        "/etcdserverpb.Auth/RoleList",
        "/v3electionpb.Election/Leader",
    }
)


def _txn_read_only(txn: rpc_pb2.TxnRequest) -> bool:
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            if not _txn_read_only(op.request_txn):
                return False
        elif kind != "request_range":
            return False
    return True


def retry_class(method: str, request: Any) -> Retry:
    """Whether the forwarded call may be repeated on another member after UNAVAILABLE."""
    if method in IMMUTABLE_METHODS:
        return Retry.IMMUTABLE
    if method == "/etcdserverpb.KV/Txn" and _txn_read_only(request):
        return Retry.IMMUTABLE
    if method == "/etcdserverpb.Maintenance/Alarm" and (request.action == rpc_pb2.AlarmRequest.GET):
        return Retry.IMMUTABLE
    return Retry.MUTABLE


def _never_sent(error: errors.EtcdError) -> bool:
    """The transport's two ways of saying a call failed before anything was sent."""
    return error.message.startswith(_CONNECT_FAILED) or error.message.endswith(
        ": could not connect"
    )


def forwarded_metadata(context: grpc.aio.ServicerContext) -> Metadata:
    return tuple(
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if key in PASSED_METADATA and isinstance(value, str)
    )


def time_left(context: grpc.aio.ServicerContext) -> float:
    """Seconds left of the caller's deadline; infinity when it set none."""
    remaining = context.time_remaining()
    return math.inf if remaining is None else max(remaining, 0.0)


async def abort_with(context: grpc.aio.ServicerContext, error: errors.EtcdError) -> NoReturn:
    await context.abort(error.code, error.message)
    raise AssertionError("unreachable: abort raises")


class Forwarder:
    """Sends client calls to the cluster through one shared `Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.leaders = LeaderTracker(transport)

    async def unary(
        self,
        method: StubMethod,
        request: Any,
        context: grpc.aio.ServicerContext,
        retry: Retry,
    ) -> Any:
        """Forward a unary call; an upstream failure aborts the client's call with it."""
        try:
            return await self.call(method, request, forwarded_metadata(context), retry, context)
        except errors.EtcdError as error:
            await abort_with(context, error)

    async def call(
        self,
        method: StubMethod,
        request: Any,
        metadata: Metadata,
        retry: Retry,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """Forward a unary call with `metadata`; raises the upstream's `EtcdError`."""
        forwarded = metadata or None

        def bound(stubs: Stubs) -> Callable[..., Awaitable[Any]]:
            rpc = method(stubs)

            def send(req: Any, *, timeout: float | None, metadata: object) -> Awaitable[Any]:
                # The transport's own metadata is replaced by the caller's.
                return rpc(req, timeout=timeout, metadata=forwarded)  # type: ignore[no-any-return]

            return send

        if retry is Retry.MUTABLE:
            return await self._to_leader(bound, request, time_left(context))
        return await self.transport.unary(
            bound, request, retry=retry, timeout=time_left(context), authenticated=False
        )

    async def _to_leader(self, method: UnaryMethod, request: Any, timeout: float) -> Any:
        """A mutation, sent to the leader; moved only while it provably has not been sent."""
        transport = self.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            endpoint = await self.leaders.leader(deadline)
            remaining = deadline - loop.time()
            if endpoint is None:
                return await transport.unary(
                    method, request, retry=Retry.MUTABLE, timeout=remaining, authenticated=False
                )
            if remaining <= 0:
                raise errors.TimeoutError()
            if not await transport.connect(endpoint, min(remaining, transport.dial_timeout)):
                transport.mark_failed(endpoint)
                self.leaders.lost(endpoint)
                continue
            try:
                return await transport.unary(
                    method,
                    request,
                    retry=Retry.MUTABLE,
                    timeout=remaining,
                    endpoint=endpoint,
                    authenticated=False,
                )
            except errors.UnavailableError as error:
                self.leaders.lost(endpoint)
                if not _never_sent(error):
                    raise

    async def server_stream(
        self, method: StubMethod, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Forward a server-streaming call (Snapshot, Observe) to one member, unchanged.

        Such a stream is not resumed elsewhere: its state (a snapshot's bytes, an observed
        leader) belongs to the member that served it, so a failure ends it for the client too.
        """
        transport = self.transport
        try:
            endpoint = await transport.stream_endpoint(transport.deadline(None))
        except errors.EtcdError as error:
            await abort_with(context, error)
        remaining = context.time_remaining()
        call = method(transport.stubs(endpoint))(
            request, timeout=remaining, metadata=forwarded_metadata(context) or None
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as rpc_error:
            error = errors.from_rpc_error(rpc_error)
            if error.code is grpc.StatusCode.UNAVAILABLE:
                transport.mark_failed(endpoint)
            await abort_with(context, error)
        finally:
            call.cancel()
