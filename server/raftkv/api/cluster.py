"""etcd's Cluster service: the member list and runtime membership changes.

The work is `node.admin.ClusterAdmin`'s; this module turns requests into its calls and its results
into etcd's responses. One thing happens here because it is a client-side act: MemberPromote on a
follower is forwarded to the leader, since only the leader knows whether the learner has caught
up. etcd 3.4 forwards over the peer URLs; raftkv calls the same Cluster method on the leader's
advertised client URL, with the caller's token, so `etcdctl member promote` works through any
endpoint and the answer (success or etcd's error) is the leader's own.
"""

from __future__ import annotations

import asyncio

import grpc

from raftkv.api.handlers import token_metadata, unary
from raftkv.membership import Member
from raftkv.node.admin import ClusterAdmin
from raftkv.node.errors import NoLeaderError, NotLeaderError
from raftkv.node.server import MemberServer
from raftkv.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc


def member_to_pb(member: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=member.id,
        name=member.name,
        peerURLs=list(member.peer_urls),
        clientURLs=list(member.client_urls),
        isLearner=member.is_learner,
    )


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: MemberServer) -> None:
        self.server = server
        self.admin = ClusterAdmin(server)

    def _fill_header(self, header: rpc_pb2.ResponseHeader) -> None:
        # etcd's Cluster service answers without a revision: membership is not MVCC state.
        self.server.fill_header(header)
        header.revision = 0

    @unary
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        member, members = await self.admin.add_member(list(request.peerURLs), request.isLearner)
        response = rpc_pb2.MemberAddResponse(
            member=rpc_pb2.Member(
                ID=member.id, peerURLs=list(member.peer_urls), isLearner=member.is_learner
            ),
            members=[member_to_pb(m) for m in members],
        )
        self._fill_header(response.header)
        return response

    @unary
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        members = await self.admin.remove_member(request.ID)
        response = rpc_pb2.MemberRemoveResponse(members=[member_to_pb(m) for m in members])
        self._fill_header(response.header)
        return response

    @unary
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        members = await self.admin.update_member(request.ID, list(request.peerURLs))
        response = rpc_pb2.MemberUpdateResponse(members=[member_to_pb(m) for m in members])
        self._fill_header(response.header)
        return response

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.server.node.read_barrier()
        response = rpc_pb2.MemberListResponse(
            members=[member_to_pb(m) for m in self.server.applier.membership.sorted_members()]
        )
        self._fill_header(response.header)
        return response

    @unary
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        try:
            members = await self.admin.promote_member(request.ID)
        except NotLeaderError:
            return await self._promote_on_leader(request, context)
        response = rpc_pb2.MemberPromoteResponse(members=[member_to_pb(m) for m in members])
        self._fill_header(response.header)
        return response

    async def _promote_on_leader(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        url = await self._leader_client_url()
        remaining = context.time_remaining()
        timeout = self.server.request_timeout if remaining is None else remaining
        async with await self.server.tls.client_channel(url) as channel:
            try:
                return await rpc_pb2_grpc.ClusterStub(channel).MemberPromote(
                    request, timeout=timeout, metadata=token_metadata(context)
                )
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
                raise  # unreachable: abort raises

    async def _leader_client_url(self) -> str:
        """The leader's first client URL, waiting briefly for a leader."""
        node = self.server.node
        try:
            async with asyncio.timeout(node.tick_seconds * node.election_ticks):
                while node.leader == 0:
                    await asyncio.sleep(node.tick_seconds)
        except TimeoutError:
            raise NoLeaderError() from None
        leader = self.server.applier.membership.get(node.leader)
        if leader is not None and leader.client_urls:
            return leader.client_urls[0]
        raise NotLeaderError()  # the leader has not published a usable client URL yet
