"""etcd's Lease service.

Grant and revoke are proposals, like KV writes; a grant without an ID gets one here, before it
is proposed, so every member applies the same ID. Renewals and remaining TTLs exist only on the
leader, whose lessor alone holds deadlines, so a member that is not the leader forwards
LeaseKeepAlive and LeaseTimeToLive to the leader's client URL (etcd forwards them to its leader
too, over the peer HTTP API) and answers with its own response header. A client keep-alive
stream gets one relayed stream to the leader, opened on its first request and reopened when the
leader changes. LeaseLeases is answered locally after a ReadIndex.

Forwarded calls carry `FORWARDED_KEY` metadata: a member answers them only while its lessor is
primary and otherwise fails them (NotPrimaryError) rather than forwarding again, so two members
that briefly disagree about the leader cannot bounce a request between them. The forwarding
member retries with whatever leader it knows then, until the request timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from raftkv.api.handlers import abort_with, requires_leader, unary
from raftkv.lease import (
    MAX_LEASE_TTL,
    NO_LEASE,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotPrimaryError,
)
from raftkv.node.errors import RequestTimeoutError
from raftkv.node.raft_node import RequestIDs
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.pb.serverpb import internal_pb2 as serverpb

log = logging.getLogger(__name__)

FORWARDED_KEY = "raftkv-forwarded"
_FORWARDED = ((FORWARDED_KEY, "1"),)
# Pause between forwarding attempts while the leader is unknown or changing.
_RETRY_SECONDS = 0.1
_INT63 = (1 << 63) - 1


def is_forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(key == FORWARDED_KEY for key, _ in (context.invocation_metadata() or ()))


class _Unreachable(Exception):
    """The leader could not answer this attempt; retry (maybe with another leader)."""


class _LeaderRelay:
    """One client keep-alive stream's relay to the leader."""

    def __init__(self, service: LeaseService) -> None:
        self._service = service
        self._url = ""
        self._call: grpc.aio.StreamStreamCall | None = None

    async def renew(self, url: str, lease_id: int, timeout: float) -> int:
        if self._call is None or url != self._url:
            self.close()
            stub = rpc_pb2_grpc.LeaseStub(await self._service.channel(url))
            self._call = stub.LeaseKeepAlive(metadata=_FORWARDED)
            self._url = url
        try:
            async with asyncio.timeout(timeout):
                await self._call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                response = await self._call.read()
        except (grpc.RpcError, TimeoutError, asyncio.InvalidStateError) as error:
            self.close()
            raise _Unreachable(str(error)) from error
        if response is grpc.aio.EOF:
            self.close()
            raise _Unreachable("the leader ended the keep-alive stream")
        return response.TTL

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server
        self._ids = RequestIDs(server.member_id)
        self._channels: dict[str, grpc.aio.Channel] = {}

    # ---- replicated: grant and revoke ----------------------------------------------------------

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        grant = rpc_pb2.LeaseGrantRequest(TTL=request.TTL, ID=request.ID or self._new_id())
        return await self.server.propose(serverpb.InternalRequest(lease_grant=grant))

    def _new_id(self) -> int:
        """etcd's choice: a positive int64 from the member's request ID generator."""
        lessor = self.server.applier.lessor
        while True:
            lease_id = self._ids.next() & _INT63
            if lease_id != NO_LEASE and lease_id not in lessor:
                return lease_id

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        return await self.server.propose(serverpb.InternalRequest(lease_revoke=request))

    # ---- leader-only: keep-alive and time-to-live --------------------------------------------

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        relay = _LeaderRelay(self)
        try:
            forwarded = is_forwarded(context)
            async for request in request_iterator:
                if requires_leader(context):
                    self.server.node.require_leader()
                if forwarded:
                    ttl = self._renew_here(request.ID)
                else:
                    ttl = await self._renew(request.ID, relay)
                response = rpc_pb2.LeaseKeepAliveResponse(ID=request.ID, TTL=ttl)
                self.server.fill_header(response.header)
                await context.write(response)
        except Exception as error:
            await abort_with(context, error)
        finally:
            relay.close()

    def _renew_here(self, lease_id: int) -> int:
        """Renew on this member's primary lessor; an unknown lease gets TTL 0, as in etcd."""
        try:
            return self.server.applier.lessor.renew(lease_id)
        except LeaseNotFoundError:
            return 0

    async def _renew(self, lease_id: int, relay: _LeaderRelay) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.request_timeout
        while True:
            if self.server.applier.lessor.is_primary:
                return self._renew_here(lease_id)
            url = self._leader_url()
            if url is not None:
                try:
                    return await relay.renew(url, lease_id, max(0.0, deadline - loop.time()))
                except _Unreachable as error:
                    log.debug("keep-alive through leader %s failed: %s", url, error)
            await self._pause_until(deadline)

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        if self.server.applier.lessor.is_primary:
            response = self._time_to_live_here(request)
        elif is_forwarded(context):
            raise NotPrimaryError()
        else:
            response = await self._forward_time_to_live(request)
        self.server.fill_header(response.header)
        return response

    def _time_to_live_here(
        self, request: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        lessor = self.server.applier.lessor
        lease = lessor.lookup(request.ID)
        if lease is None:  # etcd answers an unknown lease with TTL -1, not an error
            return rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        return rpc_pb2.LeaseTimeToLiveResponse(
            ID=lease.id,
            TTL=lessor.remaining(lease.id),
            grantedTTL=lease.ttl,
            keys=lessor.keys(lease.id) if request.keys else [],
        )

    async def _forward_time_to_live(
        self, request: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.request_timeout
        while True:
            if self.server.applier.lessor.is_primary:
                return self._time_to_live_here(request)
            url = self._leader_url()
            if url is not None:
                stub = rpc_pb2_grpc.LeaseStub(await self.channel(url))
                try:
                    response: rpc_pb2.LeaseTimeToLiveResponse = await stub.LeaseTimeToLive(
                        request, metadata=_FORWARDED, timeout=max(0.01, deadline - loop.time())
                    )
                    return response
                except grpc.RpcError as error:
                    log.debug("time-to-live through leader %s failed: %s", url, error)
            await self._pause_until(deadline)

    # ---- local -------------------------------------------------------------------------------

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        await self.server.node.read_barrier()
        response = rpc_pb2.LeaseLeasesResponse(
            leases=[
                rpc_pb2.LeaseStatus(ID=lease.id) for lease in self.server.applier.lessor.leases()
            ]
        )
        self.server.fill_header(response.header)
        return response

    # ---- reaching the leader -----------------------------------------------------------------

    def _leader_url(self) -> str | None:
        """The client URL of the leader this member knows, if it is another member."""
        leader = self.server.node.leader
        if leader in (0, self.server.member_id):
            return None
        member = self.server.applier.membership.get(leader)
        if member is None or not member.client_urls:
            return None  # not published yet
        return member.client_urls[0]

    async def channel(self, url: str) -> grpc.aio.Channel:
        """A channel to a member's client URL (TLS for https), kept for the life of the process."""
        channel = self._channels.get(url)
        if channel is None:
            channel = await self.server.tls.client_channel(url)
            # Another task may have opened one meanwhile: keep the first.
            channel = self._channels.setdefault(url, channel)
        return channel

    async def _pause_until(self, deadline: float) -> None:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise RequestTimeoutError()
        await asyncio.sleep(min(_RETRY_SECONDS, left))
